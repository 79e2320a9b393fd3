"""The built-in datasets, in the CoOp layout: folders, split files (`split_zhou_*.json`) and prompt templates
as CoOp's `datasets/*.py` define them (KaiyangZhou/CoOp; CoOp paper, Appendix A).

Adding a dataset is one ``register_dataset(DatasetSpec(...))`` or `coop_dataset` call, in user code or in a
plugin (`clipfit.plugins`).
"""

from __future__ import annotations

from .readers import (
    expect_coop_split,
    expect_csv,
    expect_fgvc,
    expect_imagefolder,
    expect_imagenet,
    expect_imagenet_sketch,
    expect_imagenet_subset,
    expect_imagenet_v2,
    read_coop_split,
    read_csv,
    read_fgvc,
    read_imagefolder,
    read_imagenet,
    read_imagenet_sketch,
    read_imagenet_subset,
    read_imagenet_v2,
)
from .registry import GENERIC_FORMATS, DatasetSpec, register_dataset
from .samples import DEFAULT_TEMPLATE


def coop_dataset(
    name: str, title: str, folder: str, image_dir: str, split_file: str, template: str, **kw
) -> DatasetSpec:
    """Register a dataset in the CoOp layout: ``<data root>/<folder>/<image_dir>/...`` and a split file
    (``split_zhou_*.json``: paths relative to ``image_dir``) in ``<folder>``; ``title`` as the papers'
    tables name it, ``template`` its prompt; further `DatasetSpec` fields as keywords."""
    return register_dataset(
        DatasetSpec(
            name=name,
            folder=folder,
            template=template,
            reader=read_coop_split,
            expected=expect_coop_split,
            title=title,
            split_file=split_file,
            image_dir=image_dir,
            **kw,
        )
    )


register_dataset(
    DatasetSpec(
        name="imagenet",
        folder="imagenet",
        template=DEFAULT_TEMPLATE,
        reader=read_imagenet,
        expected=expect_imagenet,
        title="ImageNet",
        family="coop",
    )
)
coop_dataset("caltech101", "Caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json",
             DEFAULT_TEMPLATE, family="coop")
coop_dataset("oxford_pets", "OxfordPets", "oxford_pets", "images", "split_zhou_OxfordPets.json",
             "a photo of a {}, a type of pet.", family="coop")
coop_dataset("stanford_cars", "StanfordCars", "stanford_cars", "", "split_zhou_StanfordCars.json", DEFAULT_TEMPLATE,
             family="coop")
coop_dataset("oxford_flowers", "OxfordFlowers", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json",
             "a photo of a {}, a type of flower.", family="coop")
coop_dataset("food101", "Food101", "food-101", "images", "split_zhou_Food101.json", "a photo of {}, a type of food.",
             family="coop")
register_dataset(
    DatasetSpec(
        name="fgvc_aircraft",
        folder="fgvc_aircraft",
        template="a photo of a {}, a type of aircraft.",
        reader=read_fgvc,
        expected=expect_fgvc,
        title="FGVCAircraft",
        family="coop",
    )
)
coop_dataset("sun397", "SUN397", "sun397", "SUN397", "split_zhou_SUN397.json", DEFAULT_TEMPLATE, family="coop")
coop_dataset("dtd", "DTD", "dtd", "images", "split_zhou_DescribableTextures.json",
             "a photo of a {}, a type of texture.", family="coop")
coop_dataset("eurosat", "EuroSAT", "eurosat", "2750", "split_zhou_EuroSAT.json", "a centered satellite photo of {}.",
             family="coop")
coop_dataset("ucf101", "UCF101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json",
             "a photo of a person doing {}.", family="coop")
register_dataset(
    DatasetSpec(
        name="imagenet_v2",
        folder="imagenetv2/imagenetv2-matched-frequency-format-val",
        template=DEFAULT_TEMPLATE,
        reader=read_imagenet_v2,
        expected=expect_imagenet_v2,
        title="ImageNet-V2",
        test_only=True,
        shift_of="imagenet",
    )
)
register_dataset(
    DatasetSpec(
        name="imagenet_sketch",
        folder="imagenet-sketch/images",
        template=DEFAULT_TEMPLATE,
        reader=read_imagenet_sketch,
        expected=expect_imagenet_sketch,
        title="ImageNet-Sketch",
        test_only=True,
        shift_of="imagenet",
    )
)
# The 200-class subsets, in the CoOp family's folders (CoOp DATASETS.md).
for name, folder, title in (
    ("imagenet_a", "imagenet-adversarial/imagenet-a", "ImageNet-A"),
    ("imagenet_r", "imagenet-rendition/imagenet-r", "ImageNet-R"),
):
    register_dataset(
        DatasetSpec(
            name=name,
            folder=folder,
            template=DEFAULT_TEMPLATE,
            reader=read_imagenet_subset,
            expected=expect_imagenet_subset,
            title=title,
            test_only=True,
            shift_of="imagenet",
        )
    )

# Generic formats: `root` is the user's folder / CSV file itself, hence folder "".
register_dataset(
    DatasetSpec("imagefolder", "", DEFAULT_TEMPLATE, read_imagefolder, expect_imagefolder, title="imagefolder"),
    registry=GENERIC_FORMATS,
)
register_dataset(
    DatasetSpec("csv", "", DEFAULT_TEMPLATE, read_csv, expect_csv, title="csv"),
    registry=GENERIC_FORMATS,
)
