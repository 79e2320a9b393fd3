"""Shared fixtures: a tiny random-init CLIP config and small datasets built in temporary folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
from PIL import Image

open_clip.add_model_config(Path(__file__).parent / "model_configs")

TINY_MODEL = "tiny-clip"
# Each class is a distinct colour, so a tiny model can learn the task in a few steps.
CLASS_COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 230), (230, 220, 40), (200, 40, 210), (40, 210, 210)]
CLASSNAMES = ["annual crop", "forest", "herbaceous vegetation", "highway", "industrial buildings", "pasture"]


def write_image(path: Path, colour: tuple[int, int, int], rng: np.random.Generator, size: int = 40) -> None:
    noise = rng.integers(-25, 26, size=(size, size, 3))
    pixels = np.clip(np.array(colour)[None, None, :] + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_coop_eurosat(
    root: Path, n_classes: int = 4, per_split: tuple[int, int, int] = (8, 2, 4), seed: int = 0
) -> Path:
    """A small EuroSAT in the CoOp layout: <root>/eurosat/2750/<Class>/<i>.jpg + split_zhou_EuroSAT.json."""
    rng = np.random.default_rng(seed)
    folder = root / "eurosat"
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label in range(n_classes):
        raw = CLASSNAMES[label].title().replace(" ", "")
        for name, count in zip(split, per_split):
            for i in range(count):
                rel = f"{raw}/{raw}_{name}_{i}.png"
                write_image(folder / "2750" / rel, CLASS_COLOURS[label], rng)
                split[name].append([rel, label, CLASSNAMES[label].replace(" ", "_")])
    (folder / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    return root


@pytest.fixture
def eurosat_root(tmp_path: Path) -> Path:
    return make_coop_eurosat(tmp_path / "data")


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    root = tmp_path / "photos"
    for label, name in enumerate(CLASSNAMES[:3]):
        for i in range(12):
            write_image(root / name.replace(" ", "_") / f"{i}.png", CLASS_COLOURS[label], rng)
    return root
