"""Datasets, few-shot draws, base/new class splits and image transforms.

    from clipfit.data import load_dataset, fewshot, subsample_classes
    splits = load_dataset("eurosat", "~/data")
    splits = fewshot(splits, shots=16, seed=1, cache_dir=splits.fewshot_dir)
    base = subsample_classes(splits, "base")
"""

from .catalog import coop_dataset  # registers the built-in datasets
from .check import DataCheckReport, check_dataset
from .fewshot import classes_short_of, fewshot, fewshot_cache_file, subsample_classes
from .images import ImageDataset, open_image, unreadable_images
from .readers import IMAGE_EXTENSIONS, list_images
from .registry import (
    DATASETS,
    GENERIC_FORMATS,
    DatasetReader,
    DatasetSpec,
    Expectation,
    get_spec,
    load_dataset,
    register_dataset,
)
from .samples import DEFAULT_TEMPLATE, DatasetSplits, Sample, clean_classname
from .transforms import test_transform, train_transform
from .vtab import VTAB_GROUPS, VTAB_TASKS, VtabSpec, load_vtab_tuning, vtab_group  # registers VTAB-1k's tasks

__all__ = [
    "DATASETS",
    "DEFAULT_TEMPLATE",
    "GENERIC_FORMATS",
    "IMAGE_EXTENSIONS",
    "VTAB_GROUPS",
    "VTAB_TASKS",
    "DataCheckReport",
    "DatasetReader",
    "DatasetSpec",
    "DatasetSplits",
    "Expectation",
    "ImageDataset",
    "Sample",
    "VtabSpec",
    "check_dataset",
    "classes_short_of",
    "clean_classname",
    "coop_dataset",
    "fewshot",
    "fewshot_cache_file",
    "get_spec",
    "list_images",
    "load_dataset",
    "load_vtab_tuning",
    "open_image",
    "register_dataset",
    "subsample_classes",
    "test_transform",
    "train_transform",
    "unreadable_images",
    "vtab_group",
]
