"""The defaults users see, in one place that imports nothing heavy, so `clipfit --help` shows them at once.

The config dataclass `RunConfig` takes its defaults from here.
"""

from __future__ import annotations

import os
from pathlib import Path

METHOD = "clipfit"
MODEL = "ViT-B-16"
PRETRAINED = "openai"
PROTOCOL = "few-shot"
SHOTS = 16
SEEDS = (1, 2, 3)

# Training-image caches. "decoded" (default, exact): decoded full-resolution images are kept within
# IMAGE_CACHE_MB, so crops and flips are the reference transform's, bit for bit. "resized-approximate":
# images are kept resized to the model's input size on the short side, and random crops are cut from
# that instead of the full-resolution file (faster, less memory, not the reference's augmentation).
# "none": decode every image on every read.
IMAGE_CACHES = ("decoded", "resized-approximate", "none")
# MiB per data-loading process; a 500x375 photo takes 0.72 MiB (PIL keeps 4 bytes a pixel).
IMAGE_CACHE_MB = 4096

# A run decodes every image it will read before training, and `clipfit data check` every image of the
# dataset, when there are at most this many (a few seconds of decoding; always with --check-images /
# --decode): a broken test image must not surface after the whole training.
CHECK_IMAGES_UP_TO = 2000

# Where clipfit keeps what it generates for the user: `data/` (the default data root, the mini world's
# tasks) and `fewshot/` (the few-shot draws of read-only datasets). "~" is the user's home at the time
# of use (`cache_root`).
CACHE_ROOT = "~/.cache/clipfit"


def cache_root() -> Path:
    """`CACHE_ROOT` with "~" expanded now (so a changed $HOME, as in tests, is followed)."""
    return Path(CACHE_ROOT).expanduser()


def default_data_root() -> Path:
    """$CLIPFIT_DATA, else ~/.cache/clipfit/data: where every command looks for datasets and generates
    the mini world's tasks."""
    return Path(os.environ.get("CLIPFIT_DATA") or cache_root() / "data").expanduser()
