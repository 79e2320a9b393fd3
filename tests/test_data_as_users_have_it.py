"""Data as users have it: photos taken with the camera turned, non-ASCII class names read under a non-UTF-8
locale, and open_clip training checkpoints saved in either container. Every expected value is written out
by hand here, not computed with the code under test."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from clipfit.backbone import load_backbone
from clipfit.data import ImageDataset, Sample, fewshot, load_dataset, open_image
from clipfit.errors import BackboneError

from conftest import TINY_MODEL

SRC = Path(__file__).resolve().parent.parent / "src" / "clipfit"

# --------------------------------------------------------------------------- EXIF orientation

A, B, C = (255, 0, 0), (0, 255, 0), (0, 0, 255)
D, E, F = (255, 255, 0), (0, 255, 255), (255, 0, 255)
# What a viewer shows: two rows of three pixels.
UPRIGHT = [[A, B, C], [D, E, F]]
# What the camera stored for each EXIF orientation, worked out by hand: 6 means "turn 90 degrees clockwise
# to view", so the stored image is the upright one turned 90 degrees counter-clockwise (its first column,
# read bottom to top, is the upright first row); 8 is the other way round; 3 is upside down.
STORED = {
    6: [[C, F], [B, E], [A, D]],
    8: [[D, A], [E, B], [F, C]],
    3: [[F, E, D], [C, B, A]],
}
ORIENTATION_TAG = 0x0112


def exif_with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    return exif


def write_turned(path: Path, orientation: int, *, block: int = 1) -> Path:
    """The STORED pixels of ``orientation`` (each pixel a block x block square) with that EXIF orientation."""
    pixels = np.array(STORED[orientation], dtype=np.uint8).repeat(block, axis=0).repeat(block, axis=1)
    Image.fromarray(pixels).save(path, exif=exif_with_orientation(orientation))
    return path


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_open_image_turns_a_photo_upright_as_its_exif_orientation_says(tmp_path, orientation):
    path = write_turned(tmp_path / "photo.png", orientation)  # PNG carries EXIF and is lossless
    assert Image.open(path).getexif()[ORIENTATION_TAG] == orientation
    assert np.asarray(open_image(path)).tolist() == [[list(p) for p in row] for row in UPRIGHT]


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_a_turned_jpeg_is_read_upright(tmp_path, orientation):
    path = write_turned(tmp_path / "photo.jpg", orientation, block=16)
    image = np.asarray(open_image(path)).astype(int)
    assert image.shape == (2 * 16, 3 * 16, 3)  # two rows of blocks, three columns: upright
    for r, row in enumerate(UPRIGHT):
        for c, colour in enumerate(row):
            centre = image[16 * r + 4 : 16 * r + 12, 16 * c + 4 : 16 * c + 12]  # away from JPEG's block edges
            assert np.abs(centre - np.array(colour)).max() <= 12, (r, c)


def test_a_turned_16_bit_image_is_read_upright_and_scaled_to_8_bits(tmp_path):
    # 16-bit grey: value v * 257 keeps its high byte v (see open_image); grey levels stand in for A..F.
    levels = {A: 10, B: 20, C: 30, D: 40, E: 50, F: 60}
    stored = np.array([[levels[p] * 257 for p in row] for row in STORED[6]], dtype=np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(stored).save(path, exif=exif_with_orientation(6))
    image = np.asarray(open_image(path))
    assert image[..., 0].tolist() == [[10, 20, 30], [40, 50, 60]]


@pytest.mark.parametrize("cache_bytes", [0, 10**6])
def test_training_and_evaluation_read_a_turned_photo_upright(tmp_path, cache_bytes):
    path = write_turned(tmp_path / "photo.png", 6)
    tensor, label = ImageDataset([Sample(path, 0, "thing")], cache_bytes=cache_bytes)[0]
    assert label == 0
    assert tensor.shape == (3, 2, 3)
    pixels = (tensor * 255).round().to(torch.uint8).permute(1, 2, 0).tolist()
    assert pixels == [[list(p) for p in row] for row in UPRIGHT]


def test_every_image_the_package_reads_goes_through_open_image():
    """open_image (and unreadable_images, which shares its decoder) is the one place that opens image files,
    so training, evaluation, predict, data check --decode and the few-shot draw all see them upright."""
    opening = [
        f"{path.relative_to(SRC).as_posix()}:{i}"
        for path in sorted(SRC.rglob("*.py"))
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "Image.open(" in line
    ]
    assert len(opening) == 1 and opening[0].startswith("data/images.py:"), opening


# --------------------------------------------------------------------------- text in a non-UTF-8 locale

NAMES = ["a\u00f1o", "caf\u00e9", "\u00c6r\u00f8"]  # "año", "café", "Ærø": already in code-point order


def c_locale_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LC_") and k not in ("LANG", "PYTHONIOENCODING")}
    env.update(LC_ALL="C", PYTHONUTF8="0")
    return env


# Runs in the C locale: the script is ASCII (a non-ASCII command line cannot even be decoded there) and
# prints ASCII JSON; paths are reported as text (their bytes read as UTF-8).
PRELUDE = """
import json, locale, os, sys
from pathlib import Path
root = Path(sys.argv[1])
def text(path):
    return os.fsencode(path).decode("utf-8")
out = {"locale": locale.getpreferredencoding(False), "fs": sys.getfilesystemencoding()}
"""


def run_in_c_locale(code: str, root: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", PRELUDE + code + "\nprint(json.dumps(out))", str(root)],
                          env=c_locale_env(), capture_output=True, cwd=root)
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")[-3000:]
    out = json.loads(done.stdout.decode("ascii").strip().splitlines()[-1])
    # The locale the bug needs: text and file names both ASCII unless the code says UTF-8.
    assert (out.pop("locale"), out.pop("fs")) == ("ANSI_X3.4-1968", "ascii")
    return out


def bpath(root: Path, rel: str) -> bytes:
    """``root/rel`` as the bytes on disk (UTF-8), whatever the locale of the process running the tests."""
    return os.fsencode(root) + b"/" + rel.encode("utf-8")


def write_png(root: Path, rel: str, colour: tuple[int, int, int]) -> None:
    path = bpath(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        Image.fromarray(np.full((8, 8, 3), colour, dtype=np.uint8)).save(f, format="PNG")


def write_utf8(root: Path, rel: str, text: str) -> None:
    with open(bpath(root, rel), "wb") as f:
        f.write(text.encode("utf-8"))


@pytest.fixture
def photos(tmp_path) -> Path:
    """photos/<name>/<i>.png, four images for each of NAMES, one colour per class."""
    for label, name in enumerate(NAMES):
        for i in range(4):
            write_png(tmp_path, f"photos/{name}/{i}.png", (80 * label, 40 * i, 200))
    return tmp_path


def test_a_split_file_with_non_ascii_names_is_read_right_in_the_c_locale(photos):
    rows = [[f"photos/{name}/{i}.png", label, name] for label, name in enumerate(NAMES) for i in range(4)]
    write_utf8(photos, "split.json", json.dumps({"train": rows[0::2], "val": rows[1::4], "test": rows[3::4]},
                                                ensure_ascii=False))
    out = run_in_c_locale("""
from clipfit.data import unreadable_images
from clipfit.data.readers import parse_coop_split
names, splits = parse_coop_split(root / "split.json", root)
samples = splits["train"] + splits["val"] + splits["test"]
out["names"] = names
out["paths"] = sorted(text(s.path.relative_to(root)) for s in samples)
out["unreadable"] = [text(p) for p, _ in unreadable_images(samples)]
""", photos)
    assert out == {"names": NAMES, "paths": sorted(r[0] for r in rows), "unreadable": []}


def test_a_csv_with_non_ascii_names_is_read_and_its_images_open_in_the_c_locale(photos):
    lines = [f"photos/{name}/{i}.png,{name}" for name in NAMES for i in range(4)]
    write_utf8(photos, "list.csv", "path,label\n" + "\n".join(lines) + "\n")
    out = run_in_c_locale("""
from clipfit.data import check_dataset, load_dataset, open_image
splits = load_dataset("csv", root / "list.csv")
out["names"] = splits.classnames
out["labels"] = sorted({(text(s.path.relative_to(root)), s.classname) for s in splits.train + splits.val + splits.test})
out["sizes"] = sorted({open_image(s.path).size for s in splits.train + splits.val + splits.test})
out["check"] = check_dataset("csv", root / "list.csv", decode=True).ok
""", photos)
    expected_labels = sorted([f"photos/{name}/{i}.png", name] for name in NAMES for i in range(4))
    assert out == {"names": NAMES, "labels": expected_labels, "sizes": [[8, 8]], "check": True}


def test_class_folders_with_non_ascii_names_are_those_names_in_the_c_locale(photos):
    out = run_in_c_locale("""
from clipfit.data import load_dataset
splits = load_dataset("imagefolder", root / "photos")
out["names"] = splits.classnames
out["train"] = [[text(s.path.relative_to(root)), s.label] for s in splits.train]
""", photos)
    assert out["names"] == NAMES
    # Four images a class: 0.4 val and 0.8 test round to 0 and 1, so three train images per class.
    assert [label for _, label in out["train"]] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(path.startswith(f"photos/{NAMES[label]}/") for path, label in out["train"])


def test_imagenet_classnames_file_with_non_ascii_names_is_read_right_in_the_c_locale(tmp_path):
    os.makedirs(bpath(tmp_path, "imagenet"))
    write_utf8(tmp_path, "imagenet/classnames.txt", "".join(f"n0{i} {name}\n" for i, name in enumerate(NAMES)))
    out = run_in_c_locale("""
from clipfit.data.readers import read_imagenet_classnames
out["wnids"], out["names"] = read_imagenet_classnames(root)
""", tmp_path)
    assert out == {"wnids": ["n00", "n01", "n02"], "names": NAMES}


def test_a_few_shot_draw_cached_in_a_utf8_locale_is_the_same_draw_in_the_c_locale(photos):
    if sys.getfilesystemencoding().lower().replace("-", "") != "utf8":
        pytest.skip("the test process itself must run in a UTF-8 locale to draw the first cache")
    splits = load_dataset("imagefolder", photos / "photos")
    drawn = fewshot(splits, 2, seed=1, cache_dir=photos / "cache")
    here = sorted(str(s.path.relative_to(photos)) for s in drawn.train)
    assert len(here) == 6 and all(p.split("/")[1] in NAMES for p in here)
    out = run_in_c_locale("""
from clipfit.data import fewshot, load_dataset
drawn = fewshot(load_dataset("imagefolder", root / "photos"), 2, seed=1, cache_dir=root / "cache")
out["train"] = sorted(text(s.path.relative_to(root)) for s in drawn.train)
""", photos)
    assert out == {"train": here}


# The data layer, the mini world and the checkpoint and adapter files.
TEXT_IO_CHECKED = ["data", "../clipfit_world", "backbone.py", "adapter.py", "files.py", "recipes", "readme.py"]
NOT_FILE_OPENERS = {"os", "Image", "archive", "zipfile", "safetensors"}


def text_io_without_encoding(path: Path) -> list[str]:
    """``file:line`` of every read_text / write_text / text-mode open call in ``path`` without ``encoding=``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in NOT_FILE_OPENERS:
            continue
        keywords = {k.arg: k.value for k in node.keywords}
        if name in ("read_text", "write_text"):
            text = True
        elif name == "open":
            # builtin open(file, mode) or Path.open(mode)
            if isinstance(func, ast.Name) and len(node.args) > 1:
                positional = node.args[1]
            elif isinstance(func, ast.Attribute) and node.args:
                positional = node.args[0]
            else:
                positional = None
            mode = keywords.get("mode") or positional
            text = not (isinstance(mode, ast.Constant) and "b" in str(mode.value))
        else:
            continue
        if text and "encoding" not in keywords:
            found.append(f"{path.relative_to(SRC).as_posix()}:{node.lineno}")
    return found


def test_no_text_file_is_read_or_written_in_the_locale_encoding():
    """Split files, CSVs, class-name files, caches and world task files are UTF-8 whatever the locale: every
    text-mode read and write names its encoding."""
    files = [
        p
        for entry in TEXT_IO_CHECKED
        for p in sorted((SRC / entry).rglob("*.py") if (SRC / entry).is_dir() else [SRC / entry])
    ]
    assert len(files) > 10
    assert [hit for path in files for hit in text_io_without_encoding(path)] == []


# --------------------------------------------------------------------------- checkpoints in either container


def tiny_source() -> torch.nn.Module:
    torch.manual_seed(7)  # other weights than load_backbone's random init
    return open_clip.create_model(TINY_MODEL).eval()


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


# How the field writes the same weights: open_clip's training checkpoint (DistributedDataParallel's
# "module." on every name, the optimizer beside), a bare DDP state dict, and a 1-element logit_scale.
def ddp_state(state):
    return {f"module.{k}": v for k, v in state.items()}


def training_checkpoint(state):
    return {"epoch": 3, "name": "run", "state_dict": ddp_state(state),
            "optimizer": {"state": {0: {"exp_avg": torch.zeros(2)}}, "param_groups": [{"lr": 1e-4, "params": [0]}]}}


def flattened(checkpoint, prefix=""):
    """A nested checkpoint as a flat safetensors file holds it: names joined by '.', tensors only."""
    flat = {}
    for key, value in checkpoint.items():
        if isinstance(value, dict):
            flat.update(flattened(value, f"{prefix}{key}."))
        elif isinstance(value, torch.Tensor):
            flat[f"{prefix}{key}"] = value
    return flat


LAYOUTS = {
    "ddp-state-dict": ddp_state,
    "open_clip-training-checkpoint": training_checkpoint,
    "logit-scale-of-shape-1": lambda state: {**state, "logit_scale": state["logit_scale"].reshape(1)},
}


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_checkpoint_loads_whatever_its_container(tmp_path, layout, suffix):
    source = tiny_source()
    expected = weights(source)
    checkpoint = LAYOUTS[layout](weights(source))
    path = tmp_path / f"epoch_3{suffix}"
    if suffix == ".pt":
        torch.save(checkpoint, path)
    else:
        flat = flattened(checkpoint)
        if layout == "open_clip-training-checkpoint":
            assert "state_dict.module.visual.proj" in flat and "optimizer.state.0.exp_avg" in flat
        save_file(flat, str(path))
    loaded = load_backbone(TINY_MODEL, str(path)).model.state_dict()
    assert set(loaded) == set(expected)
    for name, value in expected.items():
        assert torch.equal(loaded[name], value), name
    assert not torch.equal(loaded["visual.proj"], weights(load_backbone(TINY_MODEL, "none").model)["visual.proj"])


def test_a_safetensors_file_with_module_prefixes_on_only_some_names_is_still_refused(tmp_path):
    state = weights(tiny_source())
    first = sorted(state)[0]
    state[f"module.{first}"] = state.pop(first)
    path = tmp_path / "mixed.safetensors"
    save_file(state, str(path))
    with pytest.raises(BackboneError, match=r"tensor names do not match \(unexpected: module\."):
        load_backbone(TINY_MODEL, str(path))
