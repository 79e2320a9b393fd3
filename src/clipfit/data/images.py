"""Samples to tensors: a map-style torch Dataset that names the file when an image cannot be read."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from clipfit.errors import DataError

from .samples import Sample

# Threads that decode images for ``unreadable_images``: PIL releases the GIL while it decodes.
DECODE_WORKERS = min(8, os.cpu_count() or 1)


def _to_8bit(img: Image.Image) -> np.ndarray:
    """A single-channel high-bit-depth image (PIL mode "I;16*", "I" or "F") as (H, W) uint8.

    Integers keep their high byte, value >> (bits - 8), as PIL itself reads 16-bit colour PNGs (so a
    16-bit grey and a 16-bit colour PNG of the same values agree; 25700 -> 100, 65535 -> 255). ``bits``
    is 16 for "I;16*"; for "I" it is the TIFF's declared BitsPerSample, else 16 when every value fits
    (PIL rescales 16-bit and other >8-bit PGM/PPM files to 0..65535 in mode "I"), else 32; negative
    values become 0. Floats ("F") are read as [0, 1] when no value exceeds 1 (how float TIFFs and NumPy
    arrays usually hold intensities), else on PIL's own 0..255 scale; then rounded and clipped to 0..255.
    """
    values = np.asarray(img)
    if img.mode == "F":
        values = np.nan_to_num(values.astype(np.float64), nan=0.0)
        if values.max() <= 1.0:
            values = values * 255.0
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    if img.mode.startswith("I;16"):
        bits = 16
    else:
        declared = getattr(img, "tag_v2", {}).get(258)  # TIFF BitsPerSample: an int or one per channel
        if declared:
            bits = int(declared[0] if isinstance(declared, tuple) else declared)
        else:
            bits = 16 if values.max() <= 0xFFFF else 32
    wide = np.clip(values.astype(np.int64), 0, 2**bits - 1)
    return (wide >> max(bits - 8, 0)).astype(np.uint8)


def _decode_rgb(path) -> Image.Image:
    """The image at ``path`` fully decoded as 8-bit RGB, upright as its EXIF orientation says; raises
    whatever PIL or NumPy raises."""
    with Image.open(path) as img:
        img.load()
        # Cameras store a photo as the sensor read it and record the turn in the EXIF orientation tag
        # (6: turn 90 degrees clockwise to view); viewers apply it, so the label was given to the turned image.
        # In place, so a TIFF keeps the tags _to_8bit reads.
        ImageOps.exif_transpose(img, in_place=True)
        # PIL's convert("RGB") clips these modes' values to 0..255 instead of scaling them: a 16-bit
        # photo would come out almost all white.
        if img.mode == "I" or img.mode == "F" or img.mode.startswith("I;16"):
            return Image.fromarray(_to_8bit(img)).convert("RGB")  # (H, W) uint8: mode "L"
        return img.convert("RGB")


def _reason(path, exc: BaseException) -> str:
    """Why ``path`` could not be decoded, in one line."""
    if isinstance(exc, FileNotFoundError):
        return "not found"
    try:
        if os.path.getsize(path) == 0:
            return "the file is empty (0 bytes)"
    except OSError:
        pass  # the exception itself says why the file cannot be read
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def open_image(path) -> Image.Image:
    """The image at ``path`` as 8-bit RGB, fully decoded, and upright: the EXIF orientation a camera
    records (a JPEG, PNG, TIFF or WebP taken with the phone turned) is applied, as viewers apply it.

    Grayscale, palette, CMYK and alpha images are converted by PIL; 16-bit, 32-bit integer and float
    grayscale images are first scaled to 8 bits by their bit depth (see ``_to_8bit``: 16-bit values
    keep their high byte, value >> 8). Raises ``DataError`` in one line naming the file: "image PATH
    not found", or "image PATH cannot be read: REASON" whatever PIL raised on the file (OSError,
    ValueError, SyntaxError, struct.error, IndexError, EOFError, DecompressionBombError, ...).
    """
    try:
        return _decode_rgb(path)
    except FileNotFoundError:
        raise DataError(f"image {path} not found") from None
    # PIL's decoders raise many unrelated exception types on odd or hostile files; each of them means
    # this one file cannot be read, which is what the user needs to hear.
    except Exception as exc:
        raise DataError(f"image {path} cannot be read: {_reason(path, exc)}") from None


def decode_image_bytes(data: bytes, where: str) -> Image.Image:
    """Encoded image bytes (a record's PNG or JPEG, not a file) as `open_image` gives a file: 8-bit RGB,
    upright. Raises ``DataError`` "WHERE: the image cannot be decoded: REASON"."""
    try:
        return _decode_rgb(io.BytesIO(data))
    except Exception as exc:  # PIL's decoders raise many unrelated types; each means these bytes are not an image
        message = " ".join(str(exc).split())
        raise DataError(f"{where}: the image cannot be decoded: {type(exc).__name__}: {message}") from None


def unreadable_images(samples: Sequence[Sample], *, workers: int = DECODE_WORKERS) -> list[tuple[Path, str]]:
    """``(path, reason)`` for every listed image that ``open_image`` cannot decode, in list order.

    Fully decodes each distinct path once (``workers`` threads) and keeps nothing; ``reason`` is one
    line ("not found", "the file is empty (0 bytes)", "OSError: image file is truncated", ...). An
    empty list means every image will load in training and evaluation.
    """
    paths = list(dict.fromkeys(Path(s.path) for s in samples))

    def problem(path: Path) -> str | None:
        try:
            _decode_rgb(path)
        except Exception as exc:  # the same failures open_image turns into DataError
            return _reason(path, exc)
        return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        reasons = list(pool.map(problem, paths))
    return [(path, reason) for path, reason in zip(paths, reasons) if reason is not None]


class ImageDataset(torch.utils.data.Dataset):
    """``(samples, transform)`` -> items ``(transform(image), label)``; no transform gives a [0, 1] tensor.

    ``cache_bytes``: memory budget (bytes) for decoded images kept across reads. Training reads every
    image once per epoch and decoding a JPEG costs far more than the crop, so a training set keeps each
    decoded full-resolution RGB image (width x height x 4 bytes, as PIL stores it) until the budget is
    spent; images past it are decoded on every read. The transform (random crop and flip included) runs on every read on
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
