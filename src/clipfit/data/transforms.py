"""CLIP's train and test transforms, built with open_clip.

Train: RandomResizedCrop(scale 0.08-1, bicubic), horizontal flip (unless `hflip=False`), normalise.
open_clip's own train transform has no flip, so one is inserted right after its crop.
Test: resize the short side (bicubic), center crop, normalise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torchvision import transforms as T

# open_clip and torchvision are imported inside the functions: they take seconds, and
# `import clipfit.data` should not.


def train_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    hflip: bool = True,
) -> T.Compose:
    from open_clip import image_transform
    from open_clip.transform import AugmentationCfg
    from torchvision import transforms as T

    base = image_transform(
        image_size,
        is_train=True,
        mean=tuple(mean),
        std=tuple(std),
        interpolation="bicubic",
        aug_cfg=AugmentationCfg(scale=tuple(crop_scale)),
    )
    steps = list(base.transforms)
    crop_at = next(i for i, t in enumerate(steps) if isinstance(t, T.RandomResizedCrop))
    steps = [t for t in steps if not isinstance(t, T.RandomHorizontalFlip)]
    if hflip:
        steps.insert(crop_at + 1, T.RandomHorizontalFlip(p=0.5))
    return T.Compose(steps)


def test_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    from open_clip import image_transform

    return image_transform(
        image_size,
        is_train=False,
        mean=tuple(mean),
        std=tuple(std),
        resize_mode="shortest",
        interpolation="bicubic",
    )


test_transform.__test__ = False  # a library function, not a pytest test, wherever it is imported
