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


VTAB_LISTS = ("train800", "val200", "test")


def make_vtab_task(
    root: Path, folder: str = "vtab-1k/eurosat", n_classes: int = 3, per_list: tuple[int, int, int] = (4, 2, 3),
    seed: int = 0,
) -> Path:
    """A small VTAB-1k task as NOAH's get_vtab1k.py exports one: ``<root>/<folder>/images/<list>/000000.png``
    and the four lists ``<list>.txt`` of ``images/<list>/<i>.png <label>`` lines; train800val200 lists
    train800's labels then val200's, with images of its own under images/train800val200/ (the export writes
    each list's images apart). Returns the data root."""
    rng = np.random.default_rng(seed)
    task = root / folder
    rows: dict[str, list[tuple[int, int]]] = {}  # list -> (colour class, label) per image, in order
    for name, count in zip(VTAB_LISTS, per_list):
        rows[name] = [(label, label) for label in range(n_classes) for _ in range(count)]
    rows["train800val200"] = rows["train800"] + rows["val200"]
    for name, images in rows.items():
        lines = []
        for i, (colour, label) in enumerate(images):
            rel = f"images/{name}/{i:06d}.png"
            write_image(task / rel, CLASS_COLOURS[colour % len(CLASS_COLOURS)], rng, size=16)
            lines.append(f"{rel} {label}\n")
        (task / f"{name}.txt").write_text("".join(lines))
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
