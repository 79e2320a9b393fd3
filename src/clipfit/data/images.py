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
    """``(samples, transform)`` -> items ``(transform(image), label)``; no transform gives a [0, 1] tensor."""

    def __init__(self, samples: Sequence[Sample], transform: Callable | None = None):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        image = open_image(sample.path)
        if self.transform is None:
            from torchvision.transforms.functional import to_tensor

            return to_tensor(image), sample.label
        return self.transform(image), sample.label
