"""VTAB-1k's 19 tasks in the visual-PEFT papers' list layout (``vtab-1k/<task>/{train800,val200,train800val200,
test}.txt``, as ZhangYuanhan-AI/NOAH's get_vtab1k.py exports them), the PEFT-for-CLIP study's names for them,
and the refusals: malformed lines, and a training list that shares images with test.txt."""

from __future__ import annotations

import json
import os
import re
from fnmatch import fnmatch
from pathlib import Path

import pytest

from clipfit.cli import main
from clipfit.data import (
    DATASETS,
    VTAB_GROUPS,
    VTAB_TASKS,
    VtabSpec,
    check_dataset,
    clean_classname,
    fewshot,
    get_spec,
    load_dataset,
    load_vtab_tuning,
    vtab_group,
)
from clipfit.data.vtab import VTAB_FILE
from clipfit.errors import DataError

from conftest import make_vtab_task

# The class counts of VTAB's task definitions (google-research/task_adaptation `data/*.py`, as the VTAB-1k
# tables of VPT, NOAH and FacT list them), in VTAB's order, with each task's group.
VTAB_1K = {
    "cifar100": ("natural", 100), "caltech101": ("natural", 102), "dtd": ("natural", 47),
    "oxford_flowers102": ("natural", 102), "oxford_iiit_pet": ("natural", 37), "svhn": ("natural", 10),
    "sun397": ("natural", 397),
    "patch_camelyon": ("specialized", 2), "eurosat": ("specialized", 10), "resisc45": ("specialized", 45),
    "diabetic_retinopathy": ("specialized", 5),
    "clevr_count": ("structured", 8), "clevr_dist": ("structured", 6), "dmlab": ("structured", 6),
    "kitti": ("structured", 4), "dsprites_loc": ("structured", 16), "dsprites_ori": ("structured", 16),
    "smallnorb_azi": ("structured", 18), "smallnorb_ele": ("structured", 9),
}

# The study's --data names (Andy-LZH/peft4clip src/utils/utils.py _DATASET_CONFIG, and its README's table with
# its typos) and the task each means; vtab-smallnorb_distance is the README's name for the elevation config.
STUDY_NAMES = {
    "vtab-oxford_flowers": "oxford_flowers102", "vtab-caltech101": "caltech101", "vtab-cifar100": "cifar100",
    "vtab-dtd": "dtd", "vtba-dtd": "dtd", "vtab-eurosat": "eurosat", "vtab-oxford_pet": "oxford_iiit_pet",
    "vtab-pcam": "patch_camelyon", "vtba-pcam": "patch_camelyon", "vtab-svhncropped": "svhn", "vtab-svhn": "svhn",
    "vtab-sun397": "sun397", "vtab-clevr_count": "clevr_count", "vtab-clevr_distance": "clevr_dist",
    "vtab-dmlab": "dmlab", "vtba-dmlab": "dmlab", "vtab-kitti": "kitti", "vtab-smallnorb_azimuth": "smallnorb_azi",
    "vtab-smallnorb_elevation": "smallnorb_ele", "vtab-smallnorb_distance": "smallnorb_ele",
    "vtab-dSprites_location": "dsprites_loc", "vtab-dSprites_orientation": "dsprites_ori",
    "vtab-resisc45": "resisc45",
}

# The study's templates (src/utils/utils.py `_construct_model`), by its names.
STUDY_TEMPLATES = {
    "vtab-oxford_flowers": "a photo of a {}", "vtab-caltech101": "a photo of a {}", "vtab-cifar100": "a photo of a {}",
    "vtab-dtd": "a photo of a {}", "vtab-eurosat": "a photo of a {}", "vtab-oxford_pet": "a photo of a {}",
    "vtab-pcam": "a photo of a {}", "vtab-svhncropped": "a photo of a digital number {}",
    "vtab-sun397": "a photo of a {}", "vtab-clevr_count": "there are {} objects in the image",
    "vtab-clevr_distance": "the closest object is {} away from the camera", "vtab-dmlab": "a photo of a {}",
    "vtab-kitti": "a photo with {}", "vtab-smallnorb_azimuth": "the camera azimuth is {} degrees",
    "vtab-smallnorb_elevation": "the camera elevation is {} degrees",
    "vtab-dSprites_location": "the shape is located at x_position {}",
    "vtab-dSprites_orientation": "the shape oriented at {}", "vtab-resisc45": "satellite imagery of {}",
}


def _task_dir(root: Path, name: str) -> Path:
    return get_spec(name).data_dir(root)


def _write_list(root: Path, name: str, list_name: str, text: str) -> Path:
    path = _task_dir(root, name) / f"{list_name}.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def vtab_root(tmp_path: Path) -> Path:
    """vtab-eurosat (10 classes; 3 used) in the export's layout."""
    return make_vtab_task(tmp_path / "data")


# 1. The registry: the 19 tasks, their groups and class counts, the study's names ------------------------

def test_the_registry_holds_the_nineteen_tasks_in_vtabs_order_and_groups():
    assert VTAB_TASKS == tuple(f"vtab-{task}" for task in VTAB_1K)
    assert VTAB_GROUPS == {f"vtab-{task}": group for task, (group, _) in VTAB_1K.items()}
    assert [g for g in VTAB_GROUPS.values()].count("natural") == 7
    assert [g for g in VTAB_GROUPS.values()].count("specialized") == 4
    assert [g for g in VTAB_GROUPS.values()].count("structured") == 8
    assert {name for name, spec in DATASETS.items() if spec.family == "vtab-1k"} == set(VTAB_TASKS)


@pytest.mark.parametrize("name", VTAB_TASKS)
def test_every_task_has_vtabs_class_count_distinct_prompt_names_and_a_template(name):
    spec = DATASETS[name]
    group, n = VTAB_1K[name.removeprefix("vtab-")]
    assert isinstance(spec, VtabSpec) and spec.group == group == vtab_group(name)
    assert len(spec.classnames) == n
    assert len({clean_classname(c).casefold() for c in spec.classnames}) == n
    assert spec.template.count("{}") == 1 and spec.title and spec.folder.startswith("vtab-1k/")
    assert spec.folder == f"vtab-1k/{spec.folders[0]}" and spec.tfds


@pytest.mark.parametrize("study_name", sorted(STUDY_NAMES))
def test_the_studys_names_typos_included_name_the_task_they_mean(study_name):
    assert get_spec(study_name).name == f"vtab-{STUDY_NAMES[study_name]}"
    assert vtab_group(study_name) == VTAB_1K[STUDY_NAMES[study_name]][0]
    assert DATASETS.resolve(study_name) == f"vtab-{STUDY_NAMES[study_name]}"


@pytest.mark.parametrize("study_name", sorted(STUDY_TEMPLATES))
def test_each_task_prompts_with_the_studys_template(study_name):
    assert get_spec(study_name).template == STUDY_TEMPLATES[study_name]


def test_aliases_are_listed_apart_from_the_datasets_and_by_clipfit_data_list(capsys):
    assert "vtba-dtd" not in list(DATASETS) and DATASETS.aliases()["vtba-dtd"] == "vtab-dtd"
    main(["data", "list"])
    out = capsys.readouterr().out
    assert "vtab-dsprites_loc" in out and "vtab-dSprites_location    = vtab-dsprites_loc" in out


def test_the_structured_tasks_name_their_classes_as_the_studys_class_files_do():
    assert DATASETS["vtab-clevr_count"].classnames[:2] == ("three things", "four things")
    assert DATASETS["vtab-smallnorb_ele"].classnames == tuple(str(e) for e in range(30, 71, 5))
    assert DATASETS["vtab-smallnorb_azi"].classnames == tuple(str(a) for a in range(0, 341, 20))
    assert DATASETS["vtab-dsprites_ori"].classnames[1] == "24 degrees"
    assert DATASETS["vtab-clevr_dist"].classnames[0] == "0-8.0M"


def test_a_label_that_a_mirror_image_or_a_crop_changes_is_not_flipped_or_cropped_in_training():
    assert [n for n in VTAB_TASKS if not DATASETS[n].mirror_invariant] == [
        "vtab-svhn", "vtab-dsprites_loc", "vtab-dsprites_ori", "vtab-smallnorb_azi"]
    assert DATASETS["vtab-clevr_count"].min_crop_area == 1.0 and DATASETS["vtab-dtd"].min_crop_area == 0.08


def test_the_class_name_file_ships_with_the_package():
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text().splitlines()
    at = pyproject.index("[tool.setuptools.package-data]")
    patterns = json.loads(next(line for line in pyproject[at:] if line.startswith("clipfit = ")).split("=", 1)[1])
    assert any(fnmatch(VTAB_FILE.relative_to(VTAB_FILE.parents[1]).as_posix(), p) for p in patterns)


def test_a_name_that_is_no_vtab_task_is_refused_in_one_line():
    with pytest.raises(DataError, match="dataset 'eurosat' is not a VTAB-1k task"):
        vtab_group("eurosat")
    with pytest.raises(DataError, match=r"unknown dataset 'vtba-dt' \(did you mean vtba-dtd"):
        get_spec("vtba-dt")


# 2. Reading a task end to end ---------------------------------------------------------------------------

def test_a_task_reads_train800val200_to_train_val200_to_val_and_test(vtab_root):
    splits = load_dataset("vtab-eurosat", vtab_root)
    task = vtab_root / "vtab-1k" / "eurosat"
    assert splits.name == "vtab-eurosat" and splits.num_classes == 10
    assert splits.counts() == {"train": 18, "val": 6, "test": 9}
    assert splits.train[0].path == task / "images" / "train800val200" / "000000.png"
    assert [s.label for s in splits.train] == [0] * 4 + [1] * 4 + [2] * 4 + [0, 0, 1, 1, 2, 2]
    assert (splits.test[-1].label, splits.test[-1].classname) == (2, "herbaceous vegetation")
    assert splits.classnames[2] == "herbaceous vegetation" and splits.template == "a photo of a {}"
    assert splits.fewshot_dir == task / "split_fewshot"


def test_shots_draw_k_per_class_from_the_training_list(vtab_root):
    splits = load_dataset("vtab-eurosat", vtab_root)
    drawn = fewshot(splits, shots=2, seed=1, cache_dir=splits.fewshot_dir)
    assert sorted(s.label for s in drawn.train) == [0, 0, 1, 1, 2, 2]
    assert {s.path for s in drawn.train} <= {s.path for s in splits.train} and drawn.test == splits.test
    assert (splits.fewshot_dir / "shot_2-seed_1.json").is_file()
    assert fewshot(load_dataset("vtab-eurosat", vtab_root), 2, 1, splits.fewshot_dir).train == drawn.train


def test_a_study_name_reads_the_same_task(tmp_path):
    root = make_vtab_task(tmp_path, "vtab-1k/patch_camelyon", n_classes=2)
    assert load_dataset("vtba-pcam", root).name == "vtab-patch_camelyon"


@pytest.mark.parametrize("folder", ["vtab-1k/cifar", "vtab-1k/cifar100", "vtab1k/cifar", "vtab1k/cifar100", "cifar"])
def test_every_accepted_folder_name_is_read(tmp_path, folder):
    root = make_vtab_task(tmp_path, folder)
    splits = load_dataset("vtab-cifar100", root)
    assert splits.train[0].path.parent.parent.parent == root / folder and check_dataset("vtab-cifar100", root).ok


def test_a_coop_folder_of_the_same_name_without_lists_is_not_taken_for_the_task(tmp_path):
    (tmp_path / "dtd" / "images").mkdir(parents=True)  # CoOp's DTD
    assert get_spec("vtab-dtd").data_dir(tmp_path) == tmp_path / "vtab-1k" / "dtd"
    with pytest.raises(DataError, match="vtab-1k/dtd does not exist"):
        load_dataset("vtab-dtd", tmp_path)


def test_two_copies_of_a_task_are_read_from_the_first_with_a_warning(tmp_path):
    make_vtab_task(tmp_path, "vtab-1k/oxford_iiit_pet")
    make_vtab_task(tmp_path, "vtab-1k/oxford_pet")
    with pytest.warns(UserWarning, match="2 folders hold its lists"):
        splits = load_dataset("vtab-oxford_pet", tmp_path)
    assert splits.train[0].path.is_relative_to(tmp_path / "vtab-1k" / "oxford_iiit_pet")


def test_a_path_with_spaces_and_a_bom_are_read(vtab_root):
    task = _task_dir(vtab_root, "vtab-eurosat")
    (task / "images" / "my test").mkdir()
    os.replace(task / "images" / "test" / "000000.png", task / "images" / "my test" / "a b.png")
    _write_list(vtab_root, "vtab-eurosat", "test", "\ufeffimages/my test/a b.png  1\n\nimages/test/000001.png 0\n")
    splits = load_dataset("vtab-eurosat", vtab_root)
    assert [(s.path.name, s.label) for s in splits.test] == [("a b.png", 1), ("000001.png", 0)]


# 3. The train800 / val200 pair of a hyperparameter search ---------------------------------------------

def test_the_tuning_pair_trains_on_train800_and_evaluates_val200_without_reading_test(vtab_root):
    (_task_dir(vtab_root, "vtab-eurosat") / "test.txt").unlink()
    pair = load_vtab_tuning("vtab-eurosat", vtab_root)
    assert pair.counts() == {"train": 12, "val": 6, "test": 6} and pair.val == pair.test
    assert all("/images/train800/" in s.path.as_posix() for s in pair.train)
    assert pair.fewshot_dir == _task_dir(vtab_root, "vtab-eurosat") / "split_fewshot_train800"


def test_the_tuning_pair_refuses_a_val200_that_overlaps_train800_and_a_missing_task(vtab_root, tmp_path):
    _write_list(vtab_root, "vtab-eurosat", "val200", "images/train800/000000.png 0\n")
    with pytest.raises(DataError, match=r"train800.txt shares 1 image\(s\) with val200.txt"):
        load_vtab_tuning("vtab-eurosat", vtab_root)
    with pytest.raises(DataError, match="no VTAB-1k task folder under .* looked at .*vtab-1k/dtd"):
        load_vtab_tuning("vtba-dtd", tmp_path / "empty")
    with pytest.raises(DataError, match="not a VTAB-1k task"):
        load_vtab_tuning("dtd", vtab_root)


# 4. `clipfit data check` ----------------------------------------------------------------------------------

def test_data_check_names_the_task_folder_and_every_list_when_nothing_is_there(tmp_path):
    report = check_dataset("vtab-dmlab", tmp_path)
    missing = [line for line in report.lines if line.startswith("MISSING")]
    assert not report.ok and len(missing) == 5
    assert f"MISSING  {tmp_path / 'vtab-1k' / 'dmlab'}  -- VTAB-1k task folder of DMLab" in missing[0]
    for line, name in zip(missing[1:], ("train800.txt", "val200.txt", "train800val200.txt", "test.txt")):
        assert line.startswith(f"MISSING  {tmp_path / 'vtab-1k' / 'dmlab' / name}  -- {name}: lines")


def test_data_check_names_the_one_list_missing_and_the_missing_images(vtab_root):
    task = _task_dir(vtab_root, "vtab-eurosat")
    (task / "train800.txt").unlink()
    report = check_dataset("vtab-eurosat", vtab_root)
    assert [line for line in report.lines if line.startswith("MISSING")] == [
        f"MISSING  {task / 'train800.txt'}  -- train800.txt: lines '<image path relative to eurosat/> <label 0..9>', "
        "as NOAH's get_vtab1k.py exports them"]
    make_vtab_task(vtab_root)
    (task / "images" / "test" / "000002.png").unlink()
    report = check_dataset("vtab-eurosat", vtab_root)
    assert not report.ok and "MISSING  1 image file(s) the split lists, e.g.:" in report.lines
    assert f"         {task / 'images' / 'test' / '000002.png'}" in report.lines


def test_data_check_passes_on_a_complete_task_and_says_which_root_to_pass_for_a_task_folder(vtab_root):
    report = check_dataset("vtab-eurosat", vtab_root)
    assert report.ok and "classes: 10; images: train 18, val 6, test 9" in report.lines
    task = _task_dir(vtab_root, "vtab-eurosat")
    inside = check_dataset("vtab-eurosat", task)
    assert not inside.ok and f"pass the folder that holds vtab-1k/, --data-root {vtab_root}" in "\n".join(inside.lines)


# 5. Leakage: a training list that shares images with test.txt is refused ----------------------------------

def test_the_studys_pcam_split_train800val200_as_test_is_refused(vtab_root):
    task = _task_dir(vtab_root, "vtab-eurosat")
    (task / "test.txt").write_text((task / "train800val200.txt").read_text())
    with pytest.raises(DataError, match=r"train800val200.txt shares 18 image\(s\) with test.txt .*refused") as err:
        load_dataset("vtab-eurosat", vtab_root)
    assert "\n" not in str(err.value)
    assert "shares 18 image(s)" in "\n".join(check_dataset("vtab-eurosat", vtab_root).lines)


def test_one_shared_path_is_enough_to_refuse(vtab_root):
    task = _task_dir(vtab_root, "vtab-eurosat")
    with open(task / "test.txt", "a") as f:
        f.write("images/train800val200/000003.png 0\n")
    with pytest.raises(DataError, match=r"shares 1 image\(s\) with test.txt \(e.g. images/train800val200/000003.png\)"):
        load_dataset("vtab-eurosat", vtab_root)


@pytest.mark.parametrize("link", [os.link, os.symlink])
def test_the_same_file_under_another_name_is_refused(vtab_root, link):
    task = _task_dir(vtab_root, "vtab-eurosat")
    link(task / "images" / "test" / "000000.png", task / "images" / "extra.png")
    with open(task / "train800val200.txt", "a") as f:
        f.write("images/extra.png 0\n")
    with pytest.raises(DataError, match=r"shares 1 image\(s\) with test.txt \(e.g. images/extra.png\)"):
        load_dataset("vtab-eurosat", vtab_root)


def test_val200_overlapping_test_is_refused_too(vtab_root):
    _write_list(vtab_root, "vtab-eurosat", "val200", "images/test/000004.png 1\n")
    with pytest.raises(DataError, match=r"val200.txt shares 1 image\(s\) with test.txt"):
        load_dataset("vtab-eurosat", vtab_root)


# 6. Malformed lines: one line naming the file and the line ------------------------------------------------

@pytest.mark.parametrize(
    "line, message",
    [
        ("images/test/000000.png", r"'images/test/000000.png' has no label; expected '<image path> <label>'"),
        ("images/test/000000.png cat", r"label 'cat' is not an integer 0..9"),
        ("images/test/000000.png 3.0", r"label '3.0' is not an integer 0..9"),
        ("images/test/000000.png -1", r"label '-1' is not an integer 0..9"),
        ("images/test/000000.png 10", r"label 10 is out of range: EuroSAT has 10 classes \(labels 0..9, vtab1k.json\)"),
        ("/data/images/000000.png 1", r"image path '/data/images/000000.png' is absolute; paths are relative to "),
        ("C:\\images\\000000.png 1", r"image path 'C:\\\\images\\\\000000.png' is absolute"),
        ("../eurosat/images/test/000000.png 1", r"image path '../eurosat/images/test/000000.png' leaves the task"),
        ("images/../../x.png 1", r"image path 'images/../../x.png' leaves the task folder \('..'\)"),
        ("images/test/000001.png 0", r"'images/test/000001.png' is already listed at line 2"),
    ],
)
def test_a_malformed_line_is_refused_naming_the_file_and_line(vtab_root, line, message):
    text = f"images/test/000000.png 0\nimages/test/000001.png 0\n{line}\n"
    path = _write_list(vtab_root, "vtab-eurosat", "test", text)
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}:3: " + message) as err:
        load_dataset("vtab-eurosat", vtab_root)
    assert "\n" not in str(err.value)


def test_an_empty_list_is_refused(vtab_root):
    path = _write_list(vtab_root, "vtab-eurosat", "val200", "\n\n")
    with pytest.raises(DataError, match=f"^{re.escape(str(path))} lists no images$"):
        load_dataset("vtab-eurosat", vtab_root)


def test_images_one_folder_off_are_pointed_at(vtab_root):
    task = _task_dir(vtab_root, "vtab-eurosat")
    (task / "moved").mkdir()
    os.replace(task / "images", task / "moved" / "images")
    with pytest.raises(DataError, match=f"none of the images its lists name is under {task}; found 33 of its 33 "
                       f"images under {task / 'moved'} instead"):
        load_dataset("vtab-eurosat", vtab_root)
