"""Dataset layouts on disk: the CoOp split files, FGVC-Aircraft, ImageNet and its variants, an image
folder, a CSV, and what `check_dataset` says about each (the layout of KaiyangZhou/CoOp's DATASETS.md)."""

import csv
import dataclasses
import json
from pathlib import Path

import pytest
from PIL import Image

from clipfit.data import (
    DATASETS,
    DatasetSpec,
    check_dataset,
    fewshot,
    load_dataset,
    register_dataset,
    subsample_classes,
)
from clipfit.data.registry import GENERIC_FORMATS
from clipfit.errors import DataError


def write_image(path: Path, color=(200, 30, 30), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), color).save(path, format=fmt)
    return path


CLASSES = ["annual_crop", "forest", "sea_lake"]


def make_coop(root: Path, per_split=(4, 2, 2), split_name="split_zhou_EuroSAT.json") -> Path:
    """A tiny EuroSAT in the CoOp layout: eurosat/2750/<class>/<n>.png + eurosat/split_zhou_EuroSAT.json."""
    data_dir = root / "eurosat"
    split = {}
    for s, n in zip(("train", "val", "test"), per_split):
        rows = []
        for label, cls in enumerate(CLASSES):
            for i in range(n):
                rel = f"{cls}/{s}_{i}.png"
                write_image(data_dir / "2750" / rel)
                rows.append([rel, label, cls])
        split[s] = rows
    (data_dir / split_name).write_text(json.dumps(split))
    return data_dir


# ---------------------------------------------------------------- registry


# One template per dataset, as the official CLIPFit code has them (minglllli/CLIPFit @4dde049
# `trainers/ClipFit.py` CUSTOM_TEMPLATES; the paper's Table 8 differs only for DTD, "{} texture.").
CLIPFIT_TEMPLATES = {
    "oxford_pets": "a photo of a {}, a type of pet.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "dtd": "a photo of a {}, a type of texture.",
    "eurosat": "a centered satellite photo of {}.",
    "food101": "a photo of {}, a type of food.",
    "ucf101": "a photo of a person doing {}.",
    "stanford_cars": "a photo of a {}.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "imagenet": "a photo of a {}.",
    "imagenet_v2": "a photo of a {}.",
    "imagenet_sketch": "a photo of a {}.",
    # CoOp's imagenet_a.py / imagenet_r.py read ImageNet's template too (its classnames, a 200-class subset).
    "imagenet_a": "a photo of a {}.",
    "imagenet_r": "a photo of a {}.",
}


@pytest.mark.contract
def test_registry_holds_the_eleven_coop_datasets_and_four_imagenet_shifts():
    coop = {name for name in DATASETS if not name.startswith("mini_") and DATASETS[name].family != "vtab-1k"}
    assert coop == set(CLIPFIT_TEMPLATES)  # VTAB-1k's tasks: tests/test_vtab.py


@pytest.mark.contract
@pytest.mark.parametrize("name", sorted(CLIPFIT_TEMPLATES))
def test_prompt_template_is_the_one_the_official_code_uses(name):
    assert DATASETS[name].template == CLIPFIT_TEMPLATES[name]


def test_a_dataset_spec_describes_data_only_and_holds_no_method_defaults():
    fields = {f.name for f in dataclasses.fields(DatasetSpec)}
    assert not fields & {"default_epochs", "fewshot_beta", "epochs", "beta"}


@pytest.mark.parametrize(
    "name, split_file",
    [
        ("oxford_pets", "split_zhou_OxfordPets.json"),
        ("oxford_flowers", "split_zhou_OxfordFlowers.json"),
        ("stanford_cars", "split_zhou_StanfordCars.json"),
        ("food101", "split_zhou_Food101.json"),
        ("sun397", "split_zhou_SUN397.json"),
        ("dtd", "split_zhou_DescribableTextures.json"),
        ("eurosat", "split_zhou_EuroSAT.json"),
        ("ucf101", "split_zhou_UCF101.json"),
        ("caltech101", "split_zhou_Caltech101.json"),
    ],
)
def test_split_file_names_are_coops(name, split_file):
    assert DATASETS[name].split_file == split_file


def test_registering_a_different_dataset_under_a_taken_name_fails():
    spec = DATASETS["eurosat"]
    assert register_dataset(spec) is spec
    with pytest.raises(ValueError, match="eurosat"):
        register_dataset(DatasetSpec("eurosat", "x", "{}", spec.reader, spec.expected))


def test_unknown_dataset_name_raises_listing_the_known_ones(tmp_path):
    message = r"unknown dataset 'eurosatt' \(did you mean eurosat, vtab-eurosat\?\); known: .*eurosat.*imagefolder"
    with pytest.raises(DataError, match=message):
        load_dataset("eurosatt", tmp_path)


def test_prepare_generates_an_absent_dataset(tmp_path):
    base = DATASETS["eurosat"]
    spec = DatasetSpec("toy_synthetic", "eurosat", base.template, base.reader, base.expected, prepare=make_coop,
                       split_file=base.split_file, image_dir=base.image_dir)
    register_dataset(spec)
    try:
        assert len(load_dataset("toy_synthetic", tmp_path).train) == 12
    finally:
        DATASETS.unregister("toy_synthetic")


# ---------------------------------------------------------------- CoOp split files


def test_coop_split_reads_classnames_in_label_order_underscores_as_spaces(tmp_path):
    make_coop(tmp_path)
    splits = load_dataset("eurosat", tmp_path)
    assert splits.name == "eurosat"
    assert splits.classnames == ["annual crop", "forest", "sea lake"]
    assert splits.template == "a centered satellite photo of {}."
    assert splits.counts() == {"train": 12, "val": 6, "test": 6}
    s = splits.train[0]
    assert (s.label, s.classname) == (0, "annual crop")


def test_coop_split_paths_are_relative_to_the_image_folder(tmp_path):
    make_coop(tmp_path)
    splits = load_dataset("eurosat", tmp_path)
    assert splits.train[0].path == tmp_path / "eurosat" / "2750" / "annual_crop" / "train_0.png"
    assert all(s.path.is_file() for s in splits.train + splits.val + splits.test)


def test_fewshot_cache_goes_to_the_dataset_folder(tmp_path):
    make_coop(tmp_path)
    splits = load_dataset("eurosat", tmp_path)
    assert splits.fewshot_dir == tmp_path / "eurosat" / "split_fewshot"
    fewshot(splits, 2, seed=1, cache_dir=splits.fewshot_dir)
    assert (tmp_path / "eurosat" / "split_fewshot" / "shot_2-seed_1.json").is_file()
    assert load_dataset("eurosat", tmp_path).classnames == splits.classnames  # the cache is not a class


def test_template_can_be_overridden(tmp_path):
    make_coop(tmp_path)
    assert load_dataset("eurosat", tmp_path, template="{}.").template == "{}."


def test_missing_split_file_raises_naming_the_expected_path(tmp_path):
    make_coop(tmp_path).joinpath("split_zhou_EuroSAT.json").unlink()
    expected = tmp_path / "eurosat" / "split_zhou_EuroSAT.json"
    with pytest.raises(DataError, match=f"split file split_zhou_EuroSAT.json.* is missing at {expected}"):
        load_dataset("eurosat", tmp_path)


def test_misplaced_split_file_is_pointed_at(tmp_path):
    data_dir = make_coop(tmp_path)
    (data_dir / "split_zhou_EuroSAT.json").rename(data_dir / "2750" / "split_zhou_EuroSAT.json")
    message = r"found .*2750/split_zhou_EuroSAT\.json instead: move it to .*eurosat/split_zhou"
    with pytest.raises(DataError, match=message):
        load_dataset("eurosat", tmp_path)


def test_missing_dataset_folder_raises_listing_what_is_expected(tmp_path):
    with pytest.raises(DataError, match=r"(?s)eurosat does not exist; expected:.*split_zhou_EuroSAT\.json"):
        load_dataset("eurosat", tmp_path)


def _rewrite(data_dir: Path, edit) -> Path:
    path = data_dir / "split_zhou_EuroSAT.json"
    data = json.loads(path.read_text())
    out = edit(data)
    path.write_text(out if isinstance(out, str) else json.dumps(data))
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: "{not json", r"is not valid JSON"),
        (lambda d: "[]", r"top level is list"),
        (lambda d: d.pop("val"), r"key 'val' is missing"),
        (lambda d: d.__setitem__("test", {}), r"'test' is dict, expected a list"),
        (lambda d: d["train"].__setitem__(1, ["forest/x.png", "1", "forest"]),
         r"row train\[1\] is \['forest/x.png', '1', 'forest'\]"),
        (lambda d: d["val"].__setitem__(0, ["a.png", 0]), r"row val\[0\] is \['a.png', 0\]"),
        (lambda d: d["test"].__setitem__(0, ["a.png", True, "x"]), r"row test\[0\]"),
        (lambda d: d["test"].__setitem__(0, ["a.png", 0, "wheat"]),
         r"label 0 is named 'annual_crop' at train\[0\] and 'wheat' at test\[0\]"),
        (lambda d: [r.__setitem__(1, 3) for s in d.values() for r in s if r[1] == 2],
         r"no row has label 2 \(labels run 0..3\)"),
    ],
    ids=["not-json", "not-object", "missing-key", "split-not-list", "label-not-int", "short-row", "bool-label",
         "label-two-names", "label-gap"],
)
def test_malformed_split_file_raises_naming_the_file_and_row(tmp_path, edit, message):
    path = _rewrite(make_coop(tmp_path), edit)
    with pytest.raises(DataError, match=f"split file {path}.*{message}"):
        load_dataset("eurosat", tmp_path)


# ---------------------------------------------------------------- check_dataset


def test_check_dataset_reports_the_exact_missing_path_and_what_it_is(tmp_path):
    (tmp_path / "eurosat" / "2750").mkdir(parents=True)
    report = check_dataset("eurosat", tmp_path)
    assert not report.ok
    expected = tmp_path / "eurosat" / "split_zhou_EuroSAT.json"
    line = next(row for row in report.lines if row.startswith("MISSING"))
    assert f"MISSING  {expected}  -- split file split_zhou_EuroSAT.json: JSON {{train,val,test: " in line
    assert "CoOp repository's DATASETS.md" in line
    assert any(row.startswith(f"present  {tmp_path / 'eurosat' / '2750'}") for row in report.lines)
    assert str(expected) in str(report) and "PROBLEMS FOUND" in str(report)


@pytest.mark.contract
@pytest.mark.parametrize("name", sorted(CLIPFIT_TEMPLATES))
def test_check_dataset_lists_every_expected_path_of_every_registered_dataset(tmp_path, name):
    report = check_dataset(name, tmp_path)
    assert not report.ok
    missing = [row for row in report.lines if row.startswith("MISSING")]
    assert missing and all(f"MISSING  {tmp_path}/" in row and " -- " in row for row in missing)
    assert any(f"{tmp_path / DATASETS[name].folder}" in row for row in missing)


def test_check_dataset_reports_counts_when_readable(tmp_path):
    make_coop(tmp_path)
    report = check_dataset("eurosat", tmp_path)
    assert report.ok, str(report)
    assert "classes: 3; images: train 12, val 6, test 6" in report.lines


def test_check_dataset_counts_missing_image_files(tmp_path):
    data_dir = make_coop(tmp_path)
    gone = data_dir / "2750" / "forest" / "test_1.png"
    gone.unlink()
    report = check_dataset("eurosat", tmp_path)
    assert not report.ok
    assert "MISSING  1 image file(s) the split lists, e.g.:" in report.lines
    assert any(row.strip() == str(gone) for row in report.lines)


def test_check_dataset_reports_a_malformed_split_file(tmp_path):
    _rewrite(make_coop(tmp_path), lambda d: d.pop("train"))
    report = check_dataset("eurosat", tmp_path)
    assert not report.ok and any(row.startswith("ERROR") and "key 'train' is missing" in row for row in report.lines)


def test_check_dataset_points_at_a_misnamed_dataset_folder(tmp_path):
    make_coop(tmp_path).rename(tmp_path / "EuroSAT")
    report = check_dataset("eurosat", tmp_path)
    assert f"found {tmp_path / 'EuroSAT'} instead: rename it to eurosat" in str(report)


# ---------------------------------------------------------------- FGVC-Aircraft


def make_fgvc(root: Path) -> Path:
    d = root / "fgvc_aircraft"
    variants = ["707-320", "A300B4", "F/A-18", "Cessna 172"]
    (d / "images").mkdir(parents=True)
    (d / "variants.txt").write_text("\n".join(variants) + "\n")
    k = 0
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        lines = []
        for v in variants:
            for _ in range(n):
                image_id = f"{1000000 + k}"
                write_image(d / "images" / f"{image_id}.jpg", fmt="JPEG")
                lines.append(f"{image_id} {v}")
                k += 1
        (d / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    return d


def test_fgvc_reads_variant_files_with_spaces_and_slashes_in_names(tmp_path):
    d = make_fgvc(tmp_path)
    splits = load_dataset("fgvc_aircraft", tmp_path)
    assert splits.classnames == ["707-320", "A300B4", "F/A-18", "Cessna 172"]
    assert splits.counts() == {"train": 8, "val": 4, "test": 4}
    s = splits.train[-1]
    assert (s.path, s.label, s.classname) == (d / "images" / "1000007.jpg", 3, "Cessna 172")
    assert check_dataset("fgvc_aircraft", tmp_path).ok


def test_fgvc_unknown_variant_raises_naming_file_and_line(tmp_path):
    d = make_fgvc(tmp_path)
    with open(d / "images_variant_val.txt", "a") as f:
        f.write("1234567 Boeing 999\n")
    with pytest.raises(DataError, match=r"images_variant_val\.txt:5: variant 'Boeing 999' is not in .*variants\.txt"):
        load_dataset("fgvc_aircraft", tmp_path)


def test_fgvc_missing_variant_file_is_reported(tmp_path):
    d = make_fgvc(tmp_path)
    (d / "images_variant_test.txt").unlink()
    report = check_dataset("fgvc_aircraft", tmp_path)
    expected = f"MISSING  {d / 'images_variant_test.txt'}  -- images_variant_test.txt: lines '<imageid> <variant name>'"
    assert expected in str(report)


# ---------------------------------------------------------------- ImageNet and its shifts


WNIDS = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great_white_shark"}


def make_imagenet(root: Path, n_train=6, n_val=2) -> Path:
    d = root / "imagenet"
    d.mkdir(parents=True)
    (d / "classnames.txt").write_text("".join(f"{w} {c}\n" for w, c in WNIDS.items()))
    for w in WNIDS:
        for i in range(n_train):
            write_image(d / "images" / "train" / w / f"{w}_{i}.JPEG", fmt="JPEG")
        for i in range(n_val):
            write_image(d / "images" / "val" / w / f"val_{i}.JPEG", fmt="JPEG")
    return d


def test_imagenet_val_folder_is_the_test_set_and_val_is_drawn_from_train(tmp_path):
    d = make_imagenet(tmp_path)
    splits = load_dataset("imagenet", tmp_path)
    assert splits.classnames == ["tench", "goldfish", "great white shark"]
    assert splits.counts() == {"train": 3 * 2, "val": 3 * 4, "test": 3 * 2}  # val: 4 per class from train
    assert all(s.path.parent.parent == d / "images" / "val" for s in splits.test)
    assert not {s.path for s in splits.train} & {s.path for s in splits.val}
    assert load_dataset("imagenet", tmp_path).val == splits.val
    assert load_dataset("imagenet", tmp_path, split_seed=2).val != splits.val


def test_imagenet_folder_not_in_classnames_raises(tmp_path):
    d = make_imagenet(tmp_path)
    write_image(d / "images" / "train" / "n99999999" / "x.JPEG")
    with pytest.raises(DataError, match=r"n99999999: folder 'n99999999' is not a wnid listed in .*classnames\.txt"):
        load_dataset("imagenet", tmp_path)


def test_imagenet_v2_labels_are_folder_numbers_with_imagenet_classnames(tmp_path):
    make_imagenet(tmp_path, n_train=1, n_val=0)
    v2 = tmp_path / "imagenetv2" / "imagenetv2-matched-frequency-format-val"
    for label in range(3):
        write_image(v2 / str(label) / "a.jpeg", fmt="JPEG")
    splits = load_dataset("imagenet_v2", tmp_path)
    assert splits.train == [] and splits.val == []
    assert [(s.label, s.classname) for s in splits.test] == [(0, "tench"), (1, "goldfish"), (2, "great white shark")]


def test_imagenet_sketch_labels_follow_imagenet_classnames(tmp_path):
    make_imagenet(tmp_path, n_train=1, n_val=0)
    write_image(tmp_path / "imagenet-sketch" / "images" / "n01443537" / "sketch_0.JPEG", fmt="JPEG")
    splits = load_dataset("imagenet_sketch", tmp_path)
    assert [(s.label, s.classname) for s in splits.test] == [(1, "goldfish")]
    assert splits.classnames == ["tench", "goldfish", "great white shark"]


def test_imagenet_shift_without_imagenet_classnames_is_reported(tmp_path):
    (tmp_path / "imagenet-sketch" / "images").mkdir(parents=True)
    report = check_dataset("imagenet_sketch", tmp_path)
    assert f"MISSING  {tmp_path / 'imagenet' / 'classnames.txt'}  -- classnames.txt" in str(report)


# ---------------------------------------------------------------- imagefolder


def make_imagefolder(root: Path, classes=("cat", "dog_breed"), n=10, split_dirs=None) -> Path:
    for cls in classes:
        if split_dirs:
            for split, k in split_dirs.items():
                for i in range(k):
                    write_image(root / split / cls / f"{i}.png")
        else:
            for i in range(n):
                write_image(root / cls / f"{i}.png")
    return root


def test_imagefolder_seeded_split_is_deterministic_and_disjoint(tmp_path):
    root = make_imagefolder(tmp_path / "pets")
    a, b = load_dataset("imagefolder", root), load_dataset("imagefolder", root)
    assert (a.train, a.val, a.test) == (b.train, b.val, b.test)
    paths = [{s.path for s in getattr(a, split)} for split in ("train", "val", "test")]
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
    assert len(set().union(*paths)) == 20


def test_imagefolder_split_is_70_10_20_per_class(tmp_path):
    splits = load_dataset("imagefolder", make_imagefolder(tmp_path / "pets"))
    for split, n in (("train", 7), ("val", 1), ("test", 2)):
        labels = [s.label for s in getattr(splits, split)]
        assert labels.count(0) == labels.count(1) == n


def test_imagefolder_split_differs_across_split_seeds(tmp_path):
    root = make_imagefolder(tmp_path / "pets")
    assert load_dataset("imagefolder", root, split_seed=1).test != load_dataset("imagefolder", root, split_seed=2).test


def test_imagefolder_classes_are_sorted_folder_names_with_default_template(tmp_path):
    splits = load_dataset("imagefolder", make_imagefolder(tmp_path / "pets", classes=("zebra", "dog_breed")))
    assert splits.classnames == ["dog breed", "zebra"]
    assert splits.template == "a photo of a {}."
    assert splits.name == "pets" and splits.fewshot_dir == tmp_path / "pets" / "split_fewshot"


def test_imagefolder_train_val_test_subfolders_are_used_as_given(tmp_path):
    root = make_imagefolder(tmp_path / "d", split_dirs={"train": 3, "val": 2, "test": 1})
    splits = load_dataset("imagefolder", root)
    assert splits.counts() == {"train": 6, "val": 4, "test": 2}
    assert all(s.path.parts[-3] == "test" for s in splits.test)


def test_imagefolder_without_val_subfolder_draws_val_from_train(tmp_path):
    root = make_imagefolder(tmp_path / "d", split_dirs={"train": 8, "test": 2})
    splits = load_dataset("imagefolder", root)
    assert splits.counts() == {"train": 14, "val": 2, "test": 4}
    assert not {s.path for s in splits.train} & {s.path for s in splits.val}


def test_imagefolder_test_class_missing_from_train_raises(tmp_path):
    root = make_imagefolder(tmp_path / "d", split_dirs={"train": 2, "test": 1})
    write_image(root / "test" / "fox" / "0.png")
    with pytest.raises(DataError, match=r"test/fox: class 'fox' has no folder in .*d/train"):
        load_dataset("imagefolder", root)


def test_imagefolder_split_subfolders_need_train_and_test(tmp_path):
    root = make_imagefolder(tmp_path / "d", split_dirs={"train": 2, "val": 1})
    with pytest.raises(DataError, match=r"has \['train', 'val'\] sub-folder\(s\) but no \['test'\]"):
        load_dataset("imagefolder", root)


def test_imagefolder_empty_class_folder_raises_naming_it(tmp_path):
    root = make_imagefolder(tmp_path / "d")
    (root / "empty").mkdir()
    with pytest.raises(DataError, match=r"d/empty: class folder has no images"):
        load_dataset("imagefolder", root)


def test_imagefolder_few_shot_then_base_new(tmp_path):
    root = make_imagefolder(tmp_path / "d", classes=("a", "b", "c"), n=10)
    splits = fewshot(load_dataset("imagefolder", root), 2, seed=1, cache_dir=root / "split_fewshot")
    new = subsample_classes(splits, "new")
    assert new.classnames == ["c"] and len(new.train) == 2 and {s.label for s in new.test} == {0}
    assert load_dataset("imagefolder", root).classnames == ["a", "b", "c"]  # cache folder is not a class


# ---------------------------------------------------------------- CSV


def write_csv(path: Path, rows, header=("path", "label", "split")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_csv_with_split_column_reads_relative_and_absolute_paths(tmp_path):
    elsewhere = write_image(tmp_path / "elsewhere" / "x.png")
    rows = [
        ["img/a0.png", "tabby_cat", "train"],
        ["img/a1.png", "tabby_cat", "test"],
        [str(elsewhere), "dog", "train"],
        ["img/b1.png", "dog", "val"],
        ["img/b2.png", "dog", "test"],
    ]
    path = write_csv(tmp_path / "data" / "list.csv", rows)
    splits = load_dataset("csv", path)
    assert splits.classnames == ["dog", "tabby cat"]
    assert splits.name == "list" and splits.template == "a photo of a {}."
    assert [(s.path, s.label) for s in splits.train] == [(elsewhere, 0), (tmp_path / "data" / "img" / "a0.png", 1)]
    assert splits.counts() == {"train": 2, "val": 1, "test": 2}


def test_csv_without_split_column_uses_the_seeded_split(tmp_path):
    rows = [[f"{c}{i}.png", c] for c in "ab" for i in range(10)]
    path = write_csv(tmp_path / "l.csv", rows, header=("path", "label"))
    a, b = load_dataset("csv", path), load_dataset("csv", path)
    assert a.counts() == {"train": 14, "val": 2, "test": 4}
    assert a.test == b.test and a.test != load_dataset("csv", path, split_seed=5).test


def test_csv_unknown_class_in_test_raises_naming_file_and_line(tmp_path):
    rows = [["a.png", "cat", "train"], ["b.png", "dog", "test"], ["c.png", "cat", "test"]]
    path = write_csv(tmp_path / "l.csv", rows)
    with pytest.raises(DataError, match=rf"CSV file {path}:3: class 'dog' has no train row"):
        load_dataset("csv", path)


def test_csv_same_image_with_two_labels_raises(tmp_path):
    rows = [["a.png", "cat", "train"], ["a.png", "dog", "train"], ["b.png", "cat", "test"]]
    path = write_csv(tmp_path / "l.csv", rows)
    with pytest.raises(DataError, match=rf"CSV file {path}:3: 'a.png' is already listed at line 2"):
        load_dataset("csv", path)


@pytest.mark.parametrize(
    "header, rows, message",
    [
        (("file", "class"), [["a.png", "cat"]], r": header is \['file', 'class'\], expected 'path,label'"),
        (("path", "label", "split"), [["a.png", "cat", "training"]], r":2: split 'training' is not one of"),
        (("path", "label"), [["a.png", "cat", "x"]], r":2: .* has 3 fields, expected 2"),
        (("path", "label"), [["a.png", ""]], r":2: empty path or label"),
    ],
    ids=["header", "split-value", "columns", "empty-label"],
)
def test_malformed_csv_raises_naming_file_and_line(tmp_path, header, rows, message):
    path = write_csv(tmp_path / "l.csv", rows, header=header)
    with pytest.raises(DataError, match=f"CSV file {path}{message}"):
        load_dataset("csv", path)


def test_generic_formats_are_not_benchmark_datasets():
    assert set(GENERIC_FORMATS) == {"imagefolder", "csv"} and not set(GENERIC_FORMATS) & set(DATASETS)
