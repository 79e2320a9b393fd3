"""Data laid out differently than a reader expects, and two classes that would get one name.

Every expected message below is worked out by hand from the layout the test writes.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
from PIL import Image

from clipfit.data import check_dataset, load_dataset
from clipfit.errors import DataError


def img(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 200, 30)).save(path, format="PNG")
    return path


def classnames(root: Path, text: str) -> Path:
    f = root / "imagenet" / "classnames.txt"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(text, encoding="utf-8")
    return f


WNIDS = ("n01440764", "n01443537")


def imagenet(root: Path, *, val: str = "folders") -> Path:
    """Two classes, 6 train images each; val as wnid folders (2 each) or flat (3 files)."""
    classnames(root, "n01440764 tench\nn01443537 goldfish\n")
    d = root / "imagenet" / "images"
    for w in WNIDS:
        for i in range(6):
            img(d / "train" / w / f"{w}_{i}.png")
    if val == "folders":
        for w in WNIDS:
            for i in range(2):
                img(d / "val" / w / f"v{i}.png")
    elif val == "flat":
        for i in range(3):
            img(d / "val" / f"ILSVRC2012_val_0000000{i}.png")
    return d


def write_split(data_dir: Path, name: str, rows: dict) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    f = data_dir / name
    f.write_text(json.dumps(rows), encoding="utf-8")
    return f


# ---------------------------------------------------------------- item 1: layouts


def test_flat_imagenet_val_images_are_refused_naming_folder_and_count(tmp_path):
    d = imagenet(tmp_path, val="flat")
    expected = f"{d / 'val'} holds 3 image file(s) directly and 0 sub-folder(s): expected one <wnid>/ folder per class"
    with pytest.raises(DataError, match=re.escape(expected)):
        load_dataset("imagenet", tmp_path)
    report = check_dataset("imagenet", tmp_path)
    assert not report.ok
    assert f"ERROR    {expected}" in str(report)
    assert "validation archive has no class folders" in str(report)


def test_flat_images_beside_wnid_folders_are_not_skipped_silently(tmp_path):
    d = imagenet(tmp_path)
    img(d / "val" / "stray.png")
    with pytest.raises(DataError, match=re.escape(f"{d / 'val'} holds 1 image file(s) directly and 2 sub-folder(s)")):
        load_dataset("imagenet", tmp_path)


def test_imagenet_class_folders_one_level_too_deep_are_pointed_at(tmp_path):
    d = imagenet(tmp_path, val="none")
    for w in WNIDS:
        img(d / "val" / "val" / w / "v0.png")
    with pytest.raises(
        DataError,
        match=re.escape(f"{d / 'val'} holds no <wnid>/ class folder; found 2 <wnid> folder(s) in {d / 'val' / 'val'} "
                        f"instead: move them to {d / 'val'}"),
    ):
        load_dataset("imagenet", tmp_path)


def test_missing_imagenet_val_found_one_level_up_is_pointed_at(tmp_path):
    d = imagenet(tmp_path, val="none")
    for w in WNIDS:
        img(tmp_path / "imagenet" / "val" / w / "v0.png")
    report = check_dataset("imagenet", tmp_path)
    assert not report.ok
    assert (
        f"         found 2 <wnid> folder(s) in {tmp_path / 'imagenet' / 'val'} instead: move them to {d / 'val'}"
        in report.lines
    )


def test_imagenet_sketch_in_a_differently_named_folder_is_pointed_at(tmp_path):
    classnames(tmp_path, "n01440764 tench\nn01443537 goldfish\n")
    img(tmp_path / "imagenet-sketch" / "sketch" / "n01440764" / "s.png")  # the Kaggle archive's layout
    report = check_dataset("imagenet_sketch", tmp_path)
    expected = tmp_path / "imagenet-sketch" / "images"
    found = tmp_path / "imagenet-sketch" / "sketch"
    assert f"         found 1 <wnid> folder(s) in {found} instead: move them to {expected}" in report.lines


def test_flat_imagenet_v2_images_are_refused(tmp_path):
    classnames(tmp_path, "n01440764 tench\nn01443537 goldfish\n")
    v2 = tmp_path / "imagenetv2" / "imagenetv2-matched-frequency-format-val"
    img(v2 / "0" / "a.png")
    img(v2 / "b.png")
    img(v2 / "c.png")
    with pytest.raises(DataError, match=re.escape(f"{v2} holds 2 image file(s) directly and 1 sub-folder(s)")):
        load_dataset("imagenet_v2", tmp_path)


def test_imagenet_v2_nested_one_level_is_pointed_at(tmp_path):
    classnames(tmp_path, "n01440764 tench\nn01443537 goldfish\n")
    v2 = tmp_path / "imagenetv2" / "imagenetv2-matched-frequency-format-val"
    for label in ("0", "1"):
        img(v2 / v2.name / label / "a.png")
    message = f"found 2 <label> folder(s) in {v2 / v2.name} instead: move them to {v2}"
    with pytest.raises(DataError, match=re.escape(message)):
        load_dataset("imagenet_v2", tmp_path)


CARS_ROWS = {
    "train": [["cars_train/00001.jpg", 0, "Audi"], ["cars_train/00002.jpg", 1, "BMW"]],
    "val": [],
    "test": [["cars_test/00001.jpg", 0, "Audi"]],
}


def test_stanford_cars_images_one_folder_deeper_are_pointed_at(tmp_path):
    d = tmp_path / "stanford_cars"
    write_split(d, "split_zhou_StanfordCars.json", CARS_ROWS)
    for rel in ("cars_train/00001.jpg", "cars_train/00002.jpg", "cars_test/00001.jpg"):
        img(d / "stanford_cars" / rel)
    expected = (
        f"dataset 'stanford_cars': none of the images split_zhou_StanfordCars.json lists is under {d}; "
        f"found 3 of its 3 images under {d / 'stanford_cars'} instead: move them to {d}"
    )
    with pytest.raises(DataError, match=re.escape(expected)):
        load_dataset("stanford_cars", tmp_path)
    assert f"ERROR    {expected}" in str(check_dataset("stanford_cars", tmp_path))


def test_missing_coop_image_folder_found_in_a_nested_copy_is_pointed_at(tmp_path):
    d = tmp_path / "caltech-101"
    rows = {"train": [["face/a.jpg", 0, "face"], ["leopard/b.jpg", 1, "leopard"]], "val": [],
            "test": [["face/c.jpg", 0, "face"]]}
    write_split(d, "split_zhou_Caltech101.json", rows)
    nested = d / "caltech-101" / "101_ObjectCategories"
    for rel in ("face/a.jpg", "leopard/b.jpg"):  # 2 of the 3 listed
        img(nested / rel)
    report = check_dataset("caltech101", tmp_path)
    assert not report.ok
    expected = d / "101_ObjectCategories"
    assert f"         found 2 of its 3 images under {nested} instead: move them to {expected}" in report.lines


def test_coop_images_one_folder_up_are_pointed_at(tmp_path):
    d = tmp_path / "eurosat"
    rows = {"train": [["Forest/f1.jpg", 0, "Forest"], ["River/r1.jpg", 1, "River"]], "val": [],
            "test": [["River/r2.jpg", 1, "River"]]}
    write_split(d, "split_zhou_EuroSAT.json", rows)
    (d / "2750").mkdir()
    for rel in ("Forest/f1.jpg", "River/r1.jpg", "River/r2.jpg"):
        img(d / rel)
    message = f"found 3 of its 3 images under {d} instead: move them to {d / '2750'}"
    with pytest.raises(DataError, match=re.escape(message)):
        load_dataset("eurosat", tmp_path)


def test_coop_split_with_images_in_place_still_loads(tmp_path):
    d = tmp_path / "stanford_cars"
    write_split(d, "split_zhou_StanfordCars.json", CARS_ROWS)
    img(d / "cars_train" / "00001.jpg")  # one of three present: not relocated, the check counts the rest
    assert load_dataset("stanford_cars", tmp_path).counts() == {"train": 2, "val": 0, "test": 1}


def test_fgvc_images_one_folder_deeper_are_pointed_at(tmp_path):
    d = tmp_path / "fgvc_aircraft"
    d.mkdir()
    (d / "variants.txt").write_text("707-320\nA300B4\n")
    (d / "images_variant_train.txt").write_text("1000001 707-320\n1000002 A300B4\n")
    (d / "images_variant_val.txt").write_text("")
    (d / "images_variant_test.txt").write_text("1000003 A300B4\n")
    for i in (1, 2, 3):
        img(d / "images" / "images" / f"100000{i}.jpg")
    message = f"found 3 of its 3 images under {d / 'images' / 'images'} instead: move them to {d / 'images'}"
    with pytest.raises(DataError, match=re.escape(message)):
        load_dataset("fgvc_aircraft", tmp_path)


def test_imagefolder_of_flat_images_says_how_many_and_what_layout(tmp_path):
    for i in range(4):
        img(tmp_path / f"{i}.png")
    with pytest.raises(
        DataError,
        match=re.escape(f"image folder {tmp_path} has no class sub-folders; it holds 4 image file(s) directly: "
                        "expected one sub-folder per class"),
    ):
        load_dataset("imagefolder", tmp_path)


def test_imagefolder_flat_images_beside_class_folders_are_refused(tmp_path):
    img(tmp_path / "cat" / "a.png")
    img(tmp_path / "dog" / "b.png")
    img(tmp_path / "stray.png")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path} holds 1 image file(s) directly and 2 sub-folder(s)")):
        load_dataset("imagefolder", tmp_path)


def test_imagefolder_flat_test_split_is_refused(tmp_path):
    img(tmp_path / "train" / "cat" / "a.png")
    img(tmp_path / "train" / "dog" / "b.png")
    img(tmp_path / "test" / "c.png")
    img(tmp_path / "test" / "d.png")
    message = f"image folder {tmp_path / 'test'} has no class sub-folders; it holds 2 image file(s)"
    with pytest.raises(DataError, match=re.escape(message)):
        load_dataset("imagefolder", tmp_path)


def test_imagefolder_nested_one_level_too_deep_is_pointed_at(tmp_path):
    for cls in ("cat", "dog", "owl"):
        img(tmp_path / "photos" / cls / "a.png")
    with pytest.raises(
        DataError,
        match=re.escape(f"image folder {tmp_path} holds one folder, photos, with 3 sub-folder(s) and no image of its "
                        f"own: the class folders look one level too deep; pass --data-root {tmp_path / 'photos'}"),
    ):
        load_dataset("imagefolder", tmp_path)


# ---------------------------------------------------------------- item 2: one name, two classes


def test_imagenet_classnames_naming_two_wnids_alike_are_refused(tmp_path):
    f = classnames(tmp_path, "n01440764 tench\nn03773504 missile\nn04008634 missile\n")
    with pytest.raises(DataError) as err:
        load_dataset("imagenet", tmp_path)
    msg = str(err.value)
    assert msg.startswith(
        f"{f}: classes 'missile' (wnid n03773504, line 2) and 'missile' (wnid n04008634, line 3) both become 'missile'"
    )
    assert "give each its own name" in msg


def test_split_file_with_two_labels_of_one_name_is_refused(tmp_path):
    d = tmp_path / "eurosat"
    rows = {"train": [["a/1.jpg", 0, "Forest"], ["b/1.jpg", 1, "Forest"]], "val": [], "test": []}
    f = write_split(d, "split_zhou_EuroSAT.json", rows)
    with pytest.raises(
        DataError,
        match=re.escape(f"{f}: classes 'Forest' (label 0, first at train[0]) and 'Forest' (label 1, first at train[1]) "
                        "both become 'Forest'"),
    ):
        load_dataset("eurosat", tmp_path)


def test_split_file_labels_that_become_one_prompt_name_are_refused(tmp_path):
    d = tmp_path / "eurosat"
    rows = {"train": [["a/1.jpg", 0, "sea_lake"], ["b/1.jpg", 1, "sea lake"]], "val": [], "test": []}
    write_split(d, "split_zhou_EuroSAT.json", rows)
    message = (r"'sea_lake' \(label 0, first at train\[0\]\) and 'sea lake' \(label 1, first at train\[1\]\) "
               r"both become 'sea lake'")
    with pytest.raises(DataError, match=message):
        load_dataset("eurosat", tmp_path)


def test_coop_style_imagenet_classnames_with_clip_names_still_load(tmp_path):
    # CoOp's classnames.txt copies CLIP's names, which name ImageNet's two cranes and two maillots apart.
    text = ("n02012849 crane bird\nn03126707 construction crane\nn03710637 maillot\n"
            "n03710721 one-piece bathing suit\nn02113186 Cardigan Welsh Corgi\nn02963159 cardigan\n")
    classnames(tmp_path, text)
    from clipfit.data.readers import read_imagenet_classnames

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wnids, names = read_imagenet_classnames(tmp_path)
    assert names == ["crane bird", "construction crane", "maillot", "one-piece bathing suit", "Cardigan Welsh Corgi",
                     "cardigan"]


def test_synonym_list_classnames_take_the_first_name_with_one_warning(tmp_path):
    f = classnames(tmp_path, "n01440764 tench, Tinca tinca\n"
                             "n01443537 goldfish, Carassius auratus\n"
                             "n01484850 great white shark\n")
    from clipfit.data.readers import read_imagenet_classnames

    with pytest.warns(UserWarning) as caught:
        _, names = read_imagenet_classnames(tmp_path)
    assert names == ["tench", "goldfish", "great white shark"]
    assert [str(w.message) for w in caught] == [
        f"{f}: class names are WordNet synonym lists; taking the first name of each "
        "(e.g. n01440764 'tench, Tinca tinca' -> 'tench'), as CoOp's classnames.txt names them"
    ]


def test_synonym_list_with_true_duplicates_is_refused_saying_how_to_fix(tmp_path):
    # ImageNet's own synset list: the bird and the machine are both "crane".
    f = classnames(tmp_path, "n02012849 crane\nn03126707 crane\nn03710637 maillot\nn03710721 maillot, tank suit\n")
    with pytest.warns(UserWarning, match="synonym lists"), pytest.raises(DataError) as err:
        load_dataset("imagenet", tmp_path)
    msg = str(err.value)
    assert msg.startswith(f"{f}: classes 'crane' (wnid n02012849, line 1) and 'crane' (wnid n03126707, line 2) "
                          "both become 'crane'")
    assert "'crane bird' and n03126707 'construction crane'" in msg
    assert "\n" not in msg


def test_imagenet_classnames_differing_only_in_case_warn_like_the_other_readers(tmp_path):
    f = classnames(tmp_path, "n1 forest\nn2 FOREST\n")
    from clipfit.data.readers import read_imagenet_classnames

    with pytest.warns(UserWarning, match=re.escape(f"{f}: class labels 'forest' and 'FOREST' differ only in case")):
        assert read_imagenet_classnames(tmp_path)[1] == ["forest", "FOREST"]


# ---------------------------------------------------------------- item 10b: generated on first use


def test_check_of_an_ungenerated_mini_world_task_says_it_is_generated_on_first_use(tmp_path):
    root = tmp_path / "data"
    report = check_dataset("mini_digits", root)
    assert report.ok
    assert report.lines == [
        f"note     not generated yet: {root / 'mini_digits'} is generated on first use "
        "(by `clipfit train` or `clipfit demo`); nothing to download"
    ]
    assert not root.exists()  # the check generates nothing
