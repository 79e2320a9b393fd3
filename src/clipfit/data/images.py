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

    ``cache_bytes``: memory budget (bytes) for decoded images kept across reads. Training reads every
    image once per epoch and decoding a JPEG costs far more than the crop, so a training set keeps each
    decoded full-resolution RGB image (width x height x 4 bytes, as PIL stores it) until the budget is spent; images past
    it are decoded on every read. The transform (random crop and flip included) runs on every read on
    the same full-resolution image the reference transform sees, so the output is bit for bit the
    reference's for the same random state, cached or not. 0 keeps nothing (evaluation reads each image
    once). With ``num_workers > 0`` every data-loading process holds its own cache.

    ``resize_short_side``: resize each decoded image (bicubic) so its short side is that many pixels
    before it is cached and transformed. Approximate for training: random crops are then cut from the
    resized image, not the full-resolution file, so they differ from the reference transform's.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable | None = None, *, cache_bytes: int = 0,
                 resize_short_side: int | None = None):
        self.samples = list(samples)
        self.transform = transform
        self.cache_bytes = cache_bytes
        self.resize_short_side = resize_short_side
        self.cached_bytes = 0
        self._cache: dict[int, Image.Image] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def _decode(self, index: int) -> Image.Image:
        image = open_image(self.samples[index].path)
        if self.resize_short_side is not None:
            from torchvision.transforms import InterpolationMode
            from torchvision.transforms.functional import resize

            image = resize(image, self.resize_short_side, interpolation=InterpolationMode.BICUBIC)
        return image

    def _image(self, index: int) -> Image.Image:
        image = self._cache.get(index)
        if image is None:
            image = self._decode(index)
            size = image.width * image.height * 4  # PIL keeps an RGB pixel in 4 bytes (measured)
            if self.cached_bytes + size <= self.cache_bytes:
                self._cache[index] = image
                self.cached_bytes += size
        return image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        image = self._image(index)
        if self.transform is None:
            from torchvision.transforms.functional import to_tensor

            return to_tensor(image), sample.label
        return self.transform(image), sample.label
