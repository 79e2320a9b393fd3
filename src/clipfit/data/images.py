"""Samples to tensors: a map-style torch Dataset that names the file when an image cannot be read."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image, UnidentifiedImageError

from clipfit.errors import DataError

from .samples import Sample


def open_image(path) -> Image.Image:
    """The image at ``path`` as RGB, fully decoded; ``DataError`` naming the file otherwise."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image {path} not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"image {path} cannot be read: {exc}") from None


class ImageDataset(torch.utils.data.Dataset):
    """``(samples, transform)`` -> items ``(transform(image), label)``; no transform gives a [0, 1] tensor.

    With ``cache_short_side``, each image is decoded once, resized so its short side is that many pixels
    (bicubic, as CLIP's test transform does) and kept in memory; the transform (random crop and flip
    included) still runs on every access. Decoding a JPEG costs far more than the crop, and a few-shot
    run reads every image once per epoch. For evaluation at the model's input size the cached image is
    exactly what the test transform's resize would produce, so results are unchanged; for training the
    random crops come from the resized image rather than the full-resolution file.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable | None = None, cache_short_side: int | None = None):
        self.samples = list(samples)
        self.transform = transform
        self.cache_short_side = cache_short_side
        self._cache: dict[int, Image.Image] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def _image(self, index: int) -> Image.Image:
        if self.cache_short_side is None:
            return open_image(self.samples[index].path)
        if index not in self._cache:
            from torchvision.transforms import InterpolationMode
            from torchvision.transforms.functional import resize

            image = open_image(self.samples[index].path)
            self._cache[index] = resize(image, self.cache_short_side, interpolation=InterpolationMode.BICUBIC)
        return self._cache[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        image = self._image(index)
        if self.transform is None:
            from torchvision.transforms.functional import to_tensor

            return to_tensor(image), sample.label
        return self.transform(image), sample.label
