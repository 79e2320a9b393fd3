"""Data that breaks quietly: high-bit-depth images, files that do not decode, and readers that must agree.

Every expected value below is worked out by hand in the comment beside it, never by the code under test.
"""

import csv
import json
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipfit.data import Sample, check_dataset, load_dataset, open_image, unreadable_images
from clipfit.errors import DataError


def pixels(path: Path) -> np.ndarray:
    """The image's first row as (W, 3) uint8, as training reads it."""
    return np.asarray(open_image(path))[0]


def grey(*values: int) -> list[list[int]]:
    return [[v, v, v] for v in values]


def png16(path: Path, rows: np.ndarray, colour_type: int) -> Path:
    """A 16-bit PNG written chunk by chunk (PIL cannot write 16-bit colour): colour_type 0 grey, 2 RGB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width = rows.shape[:2]
    raw = b"".join(b"\x00" + rows[y].astype(">u2").tobytes() for y in range(height))  # filter 0 per line
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(png)
    return path


def good_png(path: Path, colour=(10, 120, 230)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), colour).save(path)
    return path


# ---------------------------------------------------------------- high bit depth (item 8)


def test_16bit_grayscale_png_keeps_the_high_byte_instead_of_turning_white(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(np.array([[0, 257 * 100, 65535, 25855, 255]], dtype=np.uint16)).save(path)
    assert path.read_bytes()[24] == 16  # IHDR bit depth: the file really is 16-bit
    # value >> 8: 0 -> 0, 25700 -> 100, 65535 -> 255, 25855 -> 100 (/257 would round it to 101), 255 -> 0
    assert pixels(path).tolist() == grey(0, 100, 255, 100, 0)


def test_16bit_grey_and_16bit_colour_pngs_of_the_same_values_agree(tmp_path):
    values = np.array([[0, 25700, 65535, 25855]], dtype=np.uint16)
    grey_png = png16(tmp_path / "grey.png", values, colour_type=0)
    colour_png = png16(tmp_path / "rgb.png", np.stack([values] * 3, axis=-1), colour_type=2)
    assert pixels(grey_png).tolist() == pixels(colour_png).tolist() == grey(0, 100, 255, 100)


def test_16bit_and_10bit_pgm_scale_by_their_maxval(tmp_path):
    p16 = tmp_path / "a.pgm"
    p16.write_bytes(b"P5 3 1 65535\n" + np.array([0, 25700, 65535], dtype=">u2").tobytes())
    assert pixels(p16).tolist() == grey(0, 100, 255)
    p10 = tmp_path / "b.pgm"
    p10.write_bytes(b"P5 3 1 1023\n" + np.array([0, 512, 1023], dtype=">u2").tobytes())
    # 512 of 1023 is 50.05%: 128 of 255 (127.6 rounds up; the 16-bit detour gives 32800 >> 8 = 128)
    assert pixels(p10).tolist() == grey(0, 128, 255)


def test_32bit_integer_tiff_scales_by_its_declared_32_bits(tmp_path):
    path = tmp_path / "i32.tif"
    Image.fromarray(np.array([[0, 100 << 24, 2**31 - 1, -5]], dtype=np.int32)).save(path)
    # value >> 24: 100 << 24 -> 100, 2**31 - 1 -> 127; negative values -> 0
    assert pixels(path).tolist() == grey(0, 100, 127, 0)


def test_float_image_in_0_1_is_scaled_to_255_and_one_on_0_255_is_kept(tmp_path):
    unit = tmp_path / "unit.tif"
    Image.fromarray(np.array([[0.0, 0.2, 1.0]], dtype=np.float32)).save(unit)
    assert pixels(unit).tolist() == grey(0, 51, 255)  # 0.2 * 255 = 51
    wide = tmp_path / "wide.tif"
    Image.fromarray(np.array([[0.0, 100.0, 300.0]], dtype=np.float32)).save(wide)
    assert pixels(wide).tolist() == grey(0, 100, 255)  # PIL's 0..255 scale, 300 clipped


def test_cmyk_palette_rgba_and_grey_images_still_convert_as_pil_does(tmp_path):
    cmyk = tmp_path / "c.jpg"
    Image.new("CMYK", (1, 1), (255, 0, 0, 0)).save(cmyk, quality=100)  # full cyan: no red
    assert pixels(cmyk)[0].tolist() == [0, 255, 255]
    palette = Image.new("P", (1, 1), 1)
    palette.putpalette([0, 0, 0, 12, 34, 56])
    palette.save(tmp_path / "p.png")
    assert pixels(tmp_path / "p.png").tolist() == [[12, 34, 56]]
    Image.new("RGBA", (1, 1), (10, 20, 30, 0)).save(tmp_path / "a.png")
    assert pixels(tmp_path / "a.png").tolist() == [[10, 20, 30]]  # alpha dropped, colour kept
    Image.new("L", (1, 1), 77).save(tmp_path / "l.png")
    assert pixels(tmp_path / "l.png").tolist() == [[77, 77, 77]]


# ---------------------------------------------------------------- files that do not decode (item 9)


def _truncated(path: Path, fmt: str) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, format=fmt)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


BAD_FILES = {
    "empty": (lambda p: _written(p, b""), "the file is empty (0 bytes)"),
    "text-named-jpg": (lambda p: _written(p, b"path,label\na.png,cat\n"), "UnidentifiedImageError: cannot identify"),
    "truncated-jpeg": (lambda p: _truncated(p, "JPEG"), "OSError: image file is truncated"),
    "truncated-png": (lambda p: _truncated(p.with_suffix(".png"), "PNG"), "OSError: image file is truncated"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_a_file_that_does_not_decode_raises_one_line_naming_it(tmp_path, kind):
    make, reason = BAD_FILES[kind]
    path = make(tmp_path / "bad.jpg")
    with pytest.raises(DataError) as info:
        open_image(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"image {path} cannot be read: {reason}")


def test_a_decompression_bomb_is_a_data_error_naming_the_file(tmp_path, monkeypatch):
    path = good_png(tmp_path / "big.png")  # 48 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)  # PIL refuses images over twice the limit
    with pytest.raises(DataError, match=rf"^image {re.escape(str(path))} cannot be read: DecompressionBombError: "):
        open_image(path)


@pytest.mark.parametrize(
    "error",
    [struct.error, IndexError, TypeError, EOFError, MemoryError, KeyError, ZeroDivisionError],
    ids=lambda error: f"{error.__module__}.{error.__name__}".removeprefix("builtins."),
)
def test_every_exception_pil_raises_on_odd_files_becomes_one_line_naming_the_file(tmp_path, monkeypatch, error):
    path = good_png(tmp_path / "odd.png")

    def fail(*args, **kwargs):
        raise error("first line\nsecond line")

    monkeypatch.setattr(Image, "open", fail)
    with pytest.raises(DataError) as info:
        open_image(path)
    assert str(info.value) == f"image {path} cannot be read: {error.__name__}: " + (
        "'first line\\nsecond line'" if error is KeyError else "first line second line"  # KeyError quotes its key
    )


def test_unreadable_images_lists_each_bad_file_once_with_its_reason(tmp_path):
    good = good_png(tmp_path / "good.png")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    truncated = _truncated(tmp_path / "t.jpg", "JPEG")
    missing = tmp_path / "gone.png"
    samples = [Sample(p, 0, "x") for p in (good, empty, missing, truncated, empty)]
    found = unreadable_images(samples)
    assert [p for p, _ in found] == [empty, missing, truncated]
    assert found[0][1] == "the file is empty (0 bytes)" and found[1][1] == "not found"
    assert found[2][1].startswith("OSError: image file is truncated")
    assert unreadable_images([Sample(good, 0, "x")]) == []


CLASSES = ["annual_crop", "forest"]


def make_coop(root: Path, per_split=(3, 2, 2)) -> Path:
    """eurosat/2750/<class>/<split>_<i>.png and the split file listing them; returns the image folder."""
    images = root / "eurosat" / "2750"
    split = {}
    for name, n in zip(("train", "val", "test"), per_split):
        split[name] = []
        for label, cls in enumerate(CLASSES):
            for i in range(n):
                good_png(images / cls / f"{name}_{i}.png")
                split[name].append([f"{cls}/{name}_{i}.png", label, cls])
    (root / "eurosat" / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    return images


def test_check_decodes_every_split_and_reports_every_unreadable_file(tmp_path):
    images = make_coop(tmp_path)
    bad = [images / "forest" / "train_2.png", images / "annual_crop" / "val_0.png", images / "forest" / "test_1.png"]
    for path in bad:
        path.write_bytes(b"")
    report = check_dataset("eurosat", tmp_path, decode=True)
    assert not report.ok
    assert [p for p, _ in report.unreadable] == sorted(bad, key=lambda p: ("train", "val", "test").index(p.stem[:-2]))
    assert "UNREADABLE  3 of 14 image(s):" in report.lines  # (3 + 2 + 2) per class, 2 classes
    for path in bad:
        assert f"         {path}  -- the file is empty (0 bytes)" in report.lines
    assert "PROBLEMS FOUND" in str(report)


def test_check_prints_20_unreadable_files_and_counts_the_rest(tmp_path):
    images = make_coop(tmp_path, per_split=(13, 1, 1))  # 26 train images, 30 in all
    for path in sorted(images.rglob("train_*.png"))[:25]:
        path.write_bytes(b"")
    report = check_dataset("eurosat", tmp_path, decode=True)
    assert len(report.unreadable) == 25
    assert "UNREADABLE  25 of 30 image(s):" in report.lines
    assert sum(line.endswith("-- the file is empty (0 bytes)") for line in report.lines) == 20
    assert report.lines[-1] == "         and 5 more"


def test_check_of_a_readable_dataset_says_every_image_decodes(tmp_path):
    make_coop(tmp_path)
    report = check_dataset("eurosat", tmp_path)
    assert report.ok and "all 14 image(s) decode" in report.lines


def write_csv(path: Path, rows, header=("path", "label", "split"), bom=False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_check_decodes_up_to_2000_images_unless_told_otherwise(tmp_path):
    # Empty files: none decodes, so whether the check decoded shows in the report at once.
    rows = [[f"img/{i}.png", "cat", "train"] for i in range(1998)]
    rows += [["img/v.png", "cat", "val"], ["img/t.png", "cat", "test"]]
    for rel, _, _ in rows:
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    path = write_csv(tmp_path / "l.csv", rows)
    assert len(check_dataset("csv", path).unreadable) == 2000  # 2000 listed: decoded by default

    (tmp_path / "img" / "extra.png").write_bytes(b"")
    path = write_csv(tmp_path / "l.csv", rows + [["img/extra.png", "cat", "train"]])
    skipped = check_dataset("csv", path)
    assert skipped.ok and skipped.unreadable == []
    assert "images not decoded (2001 > 2000); pass --decode" in skipped.lines
    assert len(check_dataset("csv", path, decode=True).unreadable) == 2001
    assert check_dataset("csv", tmp_path / "l.csv", decode=False).ok


@pytest.mark.parametrize("split", ["train", "test"])
def test_check_reports_an_empty_split_by_name(tmp_path, split):
    make_coop(tmp_path)
    split_file = tmp_path / "eurosat" / "split_zhou_EuroSAT.json"
    data = json.loads(split_file.read_text())
    data[split] = []
    if split == "train":  # keep labels 0..n-1 present in the file
        data["val"] += [["forest/train_0.png", 1, "forest"], ["annual_crop/train_0.png", 0, "annual_crop"]]
    split_file.write_text(json.dumps(data))
    report = check_dataset("eurosat", tmp_path)
    assert not report.ok
    assert f"EMPTY    split {split!r} lists no images" in report.lines


def test_check_notes_an_empty_val_split_without_failing(tmp_path):
    make_coop(tmp_path)
    split_file = tmp_path / "eurosat" / "split_zhou_EuroSAT.json"
    split_file.write_text(json.dumps({**json.loads(split_file.read_text()), "val": []}))
    report = check_dataset("eurosat", tmp_path)
    assert report.ok and "note     split 'val' lists no images (no run needs it)" in report.lines


def test_check_of_a_test_only_dataset_needs_only_its_test_split(tmp_path):
    (tmp_path / "imagenet").mkdir()
    (tmp_path / "imagenet" / "classnames.txt").write_text("n01440764 tench\n")
    good_png(tmp_path / "imagenet-sketch" / "images" / "n01440764" / "s.png")
    report = check_dataset("imagenet_sketch", tmp_path)
    assert report.ok, str(report)
    assert not any(line.startswith("EMPTY") for line in report.lines)


# ---------------------------------------------------------------- the readers agree (item 15)


def test_split_file_with_a_utf8_bom_is_read(tmp_path):
    make_coop(tmp_path)
    split_file = tmp_path / "eurosat" / "split_zhou_EuroSAT.json"
    split_file.write_bytes(b"\xef\xbb\xbf" + split_file.read_bytes())
    assert load_dataset("eurosat", tmp_path).classnames == ["annual crop", "forest"]


def test_csv_with_a_utf8_bom_is_read(tmp_path):
    path = write_csv(tmp_path / "l.csv", [["a.png", "cat", "train"], ["b.png", "cat", "test"]], bom=True)
    assert path.read_bytes().startswith(b"\xef\xbb\xbfpath,")
    assert load_dataset("csv", path).classnames == ["cat"]


def test_split_file_refuses_an_image_listed_twice_naming_both_rows(tmp_path):
    make_coop(tmp_path)
    split_file = tmp_path / "eurosat" / "split_zhou_EuroSAT.json"
    data = json.loads(split_file.read_text())
    data["test"].append(["./forest/train_1.png", 1, "forest"])  # train[4], the same file spelt differently
    split_file.write_text(json.dumps(data))
    with pytest.raises(
        DataError,
        match=rf"^split file {re.escape(str(split_file))}: row test\[4\] lists './forest/train_1.png', "
        r"already listed at row train\[4\]$",
    ):
        load_dataset("eurosat", tmp_path)


def test_csv_refuses_an_image_listed_twice_naming_both_lines(tmp_path):
    rows = [["a.png", "cat", "train"], ["b.png", "cat", "test"], ["a.png", "cat", "train"]]
    path = write_csv(tmp_path / "l.csv", rows)
    with pytest.raises(DataError, match=rf"^CSV file {re.escape(str(path))}:4: 'a.png' is already listed at line 2$"):
        load_dataset("csv", path)


def test_csv_labels_differing_only_in_case_warn_naming_both_and_the_file(tmp_path):
    rows = [["a.png", "forest", "train"], ["b.png", "FOREST", "train"], ["c.png", "forest", "test"]]
    path = write_csv(tmp_path / "l.csv", rows)
    with pytest.warns(UserWarning) as caught:
        splits = load_dataset("csv", path)
    assert splits.classnames == ["FOREST", "forest"]  # still two classes, sorted
    assert [str(w.message) for w in caught] == [
        f"{path}: class labels 'FOREST' and 'forest' differ only in case, underscores or spacing and are kept "
        "as two classes; rename one if they are the same class"
    ]


def test_split_file_classnames_differing_only_in_case_or_spacing_warn(tmp_path):
    make_coop(tmp_path)
    split_file = tmp_path / "eurosat" / "split_zhou_EuroSAT.json"
    data = json.loads(split_file.read_text())
    for split in data.values():
        for row in split:
            row[2] = {0: "sea_lake", 1: "Sea  Lake"}[row[1]]
    split_file.write_text(json.dumps(data))
    message = rf"^{re.escape(str(split_file))}: class labels 'sea_lake' and 'Sea  Lake' differ"
    with pytest.warns(UserWarning, match=message):
        load_dataset("eurosat", tmp_path)


def test_distinct_labels_do_not_warn(tmp_path):
    make_coop(tmp_path)
    path = write_csv(tmp_path / "l.csv",
                     [["a.png", "forest", "train"], ["b.png", "forests", "train"], ["c.png", "forest", "test"]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset("eurosat", tmp_path)
        load_dataset("csv", path)
