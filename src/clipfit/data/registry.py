"""The dataset registry: one ``DatasetSpec`` per name, and ``load_dataset`` on top of it.

The built-in datasets are registered in ``catalog.py``; ``imagefolder`` and ``csv`` are generic
formats whose ``root`` is the user's own folder or CSV file (see ``GENERIC_FORMATS``).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from clipfit.errors import DataError
from clipfit.registry import Registry

from .samples import DatasetSplits, check_template


@dataclass(frozen=True)
class Expectation:
    """One thing ``check_dataset`` looks for on disk, and what it is. ``hint``, when given, says in one
    line where a missing thing is instead (images one folder up or down), or returns ""."""

    path: Path
    description: str
    kind: Literal["file", "dir"] = "file"
    hint: Callable[[], str] | None = field(default=None, compare=False, repr=False)


class DatasetReader(Protocol):
    def __call__(self, root: Path, spec: DatasetSpec, *, split_seed: int = 1) -> DatasetSplits: ...


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: where it lives under the data root, how to read it, its prompt.

    A spec describes data only; what a method does with it (epochs, loss weights) is the method's
    business (`Method.protocol_defaults`, `Method.optim_defaults`).

    ``reader(root, spec, split_seed=...)`` and ``expected(root, spec)`` take the *data root* (the
    folder holding every dataset's folder), not the dataset folder: a few datasets (ImageNet-V2,
    ImageNet-Sketch) borrow files from a sibling folder.

    ``prepare(root)``, for data generated rather than downloaded (the mini world's tasks), writes the
    dataset folder on first use; ``load_dataset`` calls it, ``check_dataset`` only says it will run.
    """

    name: str
    folder: str
    template: str
    reader: DatasetReader
    expected: Callable[[Path, DatasetSpec], list[Expectation]]
    prepare: Callable[[Path], None] | None = None
    title: str = ""  # as the papers' tables name it, e.g. "EuroSAT"
    split_file: str | None = None  # CoOp split JSON, in the dataset folder
    image_dir: str = ""  # relative to the dataset folder; split-file paths are relative to it
    test_only: bool = False  # no train/val split (ImageNet-V2, ImageNet-Sketch)
    # Whether a mirror image keeps the label, so training may flip images. Not for glyphs: a mirrored
    # "b" is a "d", a mirrored "7" no digit at all.
    mirror_invariant: bool = True
    # Smallest area fraction of a training crop (RandomResizedCrop's scale (min_crop_area, 1)): the
    # papers' 0.08, unless a crop that small no longer shows the class (the mini world's glyphs).
    min_crop_area: float = 0.08
    # The benchmark family a dataset belongs to ("coop": the CoOp family's eleven; "mini-world"): the
    # cross-dataset protocol's default targets are the source's family.
    family: str = ""
    # For a test-only dataset under a distribution shift, the dataset whose classes (or a subset of them)
    # it shows (ImageNet-V2, -Sketch, -A, -R: "imagenet"): the distribution-shift protocol's default targets.
    shift_of: str | None = None

    def data_dir(self, root: str | Path) -> Path:
        return Path(root) / self.folder


# The CoOp family's eleven datasets in its papers' table order, then the test-only ImageNet variants;
# datasets registered by plugins (the mini world's tasks) follow alphabetically.
DATASETS: Registry[DatasetSpec] = Registry("dataset", error=DataError, order=(
    "imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
    "sun397", "dtd", "eurosat", "ucf101", "imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"))

# Formats whose root is the dataset itself; not benchmark datasets, so kept out of DATASETS.
GENERIC_FORMATS: Registry[DatasetSpec] = Registry("dataset format", error=DataError, order=("imagefolder", "csv"))


def register_dataset(spec: DatasetSpec, *, registry: Registry[DatasetSpec] | None = None) -> DatasetSpec:
    """Add ``spec`` to the registry under ``spec.name``; registering a different spec twice raises `ValueError`."""
    return (DATASETS if registry is None else registry).register(spec.name, spec)


def get_spec(name: str) -> DatasetSpec:
    """The spec of a registered dataset (by its name or an alias, `Registry.register_alias`) or generic
    format; `DataError` naming close matches otherwise."""
    spec = DATASETS.get(name) or GENERIC_FORMATS.get(name)
    if spec is None:
        names = DATASETS.names() + GENERIC_FORMATS.names()
        close = difflib.get_close_matches(name, names + list(DATASETS.aliases()), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise DataError(f"unknown dataset {name!r}{hint}; known: {', '.join(names)}")
    return spec


def _absolute(root: str | Path) -> Path:
    # abspath, not resolve(): keep the user's symlinked data root as they named it.
    return Path(os.path.abspath(os.path.expanduser(str(root))))


def load_dataset(
    name: str, root: str | Path, *, split_seed: int = 1, template: str | None = None
) -> DatasetSplits:
    """Read dataset ``name``.

    For a registered dataset ``root`` is the data root holding ``<spec.folder>``; for ``imagefolder``
    it is the folder of class sub-folders and for ``csv`` the CSV file. ``split_seed`` fixes every
    split the reader has to draw itself (ImageNet's val, imagefolder/CSV without split information).
    ``template`` overrides the dataset's prompt template.
    """
    spec = get_spec(name)
    root = _absolute(root)
    data_dir = spec.data_dir(root)
    if spec.prepare is not None:
        spec.prepare(root)  # generates on first use, and again when the generator has changed since
    elif not data_dir.exists():
        lines = "\n".join(f"  {e.path}  ({e.description})" for e in spec.expected(root, spec))
        raise DataError(f"dataset {name!r}: {data_dir} does not exist; expected:\n{lines}")
    splits = spec.reader(root, spec, split_seed=split_seed)
    if template is not None:
        check_template(template)
        splits = dataclasses.replace(splits, template=template)
    return splits
