"""The defaults users see, in one place that imports nothing heavy, so `clipfit --help` shows them at once.

The config dataclasses (`RunConfig`, `DemoConfig`, `MiniWorldTableConfig`) take their defaults from here.
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

# The demo: digits, where zero-shot is clearly above chance (29% over 10 classes) but far from perfect,
# as on a real downstream task; the README's table has every task, the ones where CLIPFit loses included.
DEMO_TASK = "mini_digits"
DEMO_OUT = "runs/demo"
DEMO_EPOCHS = 100
TABLE_OUT = "runs/mini-world-table"


def default_data_root() -> Path:
    """$CLIPFIT_DATA, else ~/.cache/clipfit/data: where every command looks for datasets and generates
    the mini world's tasks."""
    return Path(os.environ.get("CLIPFIT_DATA") or Path.home() / ".cache" / "clipfit" / "data").expanduser()
