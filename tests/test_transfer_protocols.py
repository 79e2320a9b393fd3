"""Cross-dataset transfer and distribution shift (CoCoOp Sec. 4.2-4.3; CLIPFit Tables 3 and 9), end to end on
a tiny random-init CLIP and small fixtures in the real layouts: a CoOp-layout ImageNet with its V2, Sketch, A
and R test sets, and two CoOp targets."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest

from clipfit import api, data
from clipfit.cli import main
from clipfit.config import RunConfig
from clipfit.errors import ClipFitError, DataError
from clipfit.protocols import PROTOCOLS, get_protocol
from clipfit.runner import draw_sha256, resolve
from clipfit.store import default_out, setting

from conftest import CLASS_COLOURS, TINY_MODEL, make_coop_eurosat, write_image

WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]
NAMES = ["tench", "goldfish", "great white shark", "tiger shark"]


def make_imagenet_family(root: Path) -> Path:
    """ImageNet (4 classes: 6 train and 2 val images each) in the CoOp layout, its V2 (label folders), Sketch
    (wnid folders), A (2 of its classes) and R (3 of them, and a README.txt as the release has), EuroSAT and a
    Caltech101-layout target; each class one colour, as conftest's datasets."""
    rng = np.random.default_rng(0)
    (root / "imagenet").mkdir(parents=True)
    (root / "imagenet" / "classnames.txt").write_text(
        "".join(f"{w} {n}\n" for w, n in zip(WNIDS, NAMES)), encoding="utf-8"
    )
    for label, wnid in enumerate(WNIDS):
        colour = CLASS_COLOURS[label]
        for i in range(6):
            write_image(root / "imagenet/images/train" / wnid / f"{wnid}_{i}.png", colour, rng)
        for i in range(2):
            write_image(root / "imagenet/images/val" / wnid / f"val_{i}.png", colour, rng)
            write_image(root / "imagenetv2/imagenetv2-matched-frequency-format-val" / str(label) / f"{i}.png",
                        colour, rng)
            write_image(root / "imagenet-sketch/images" / wnid / f"s{i}.png", colour, rng)
    for folder, kept in (("imagenet-adversarial/imagenet-a", [3, 1]), ("imagenet-rendition/imagenet-r", [0, 2, 3])):
        for label in kept:
            write_image(root / folder / WNIDS[label] / "a.png", CLASS_COLOURS[label], rng)
    (root / "imagenet-rendition/imagenet-r/README.txt").write_text("release notes\n", encoding="utf-8")
    make_coop_eurosat(root, n_classes=3)
    split = {"train": [], "val": [], "test": []}
    for label, name in enumerate(["airplane", "bonsai"]):
        for i in range(3):
            rel = f"{name}/image_{i:04d}.jpg"
            write_image(root / "caltech-101/101_ObjectCategories" / rel, CLASS_COLOURS[label + 3], rng)
            split["test"].append([rel, label, name])
    (root / "caltech-101/split_zhou_Caltech101.json").write_text(json.dumps(split), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def family_root(tmp_path_factory) -> Path:
    return make_imagenet_family(tmp_path_factory.mktemp("data"))


def config(root: Path, out: Path, **fields) -> RunConfig:
    fields = {"method": "clipfit", "model": TINY_MODEL, "pretrained": "none", "dataset": "imagenet",
              "data_root": str(root), "shots": 2, "seeds": [1], "out": str(out), **fields}
    optim = fields.pop("optim", {"epochs": 1, "batch_size": 4})
    return api.replace_config(RunConfig(**fields), optim=optim)


def test_the_protocols_are_registered_in_the_papers_order():
    assert list(PROTOCOLS) == ["few-shot", "base2new", "cross-dataset", "distribution-shift", "vtab"]
    assert get_protocol("cross-dataset").evaluates_unseen and not get_protocol("distribution-shift").evaluates_unseen


def test_cross_dataset_targets_imagenets_ten_coop_datasets_in_the_papers_order():
    targets = get_protocol("cross-dataset").default_targets("imagenet")
    assert targets == ["caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
                       "sun397", "dtd", "eurosat", "ucf101"]
    # Another source of the family: the other ten, ImageNet among them.
    assert get_protocol("cross-dataset").default_targets("eurosat")[0] == "imagenet"


def test_distribution_shift_targets_imagenets_four_shifted_test_sets():
    assert get_protocol("distribution-shift").default_targets("imagenet") == [
        "imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
    assert get_protocol("distribution-shift").default_targets("mini_shapes") == ["mini_shapes_sketch"]
    with pytest.raises(ClipFitError, match="no registered dataset is a shifted test set of 'eurosat'"):
        get_protocol("distribution-shift").default_targets("eurosat")


def test_imagenet_a_and_r_are_200_class_subsets_named_from_imagenets_classnames(family_root):
    a = data.load_dataset("imagenet_a", family_root)
    r = data.load_dataset("imagenet_r", family_root)
    # The wnid folders present are the classes, in sorted folder order (CoOp's imagenet_a.py / imagenet_r.py).
    assert a.classnames == ["goldfish", "tiger shark"] and [s.label for s in a.test] == [0, 1]
    assert r.classnames == ["tench", "great white shark", "tiger shark"]  # README.txt is not a class
    assert not a.train and not a.val and data.get_spec("imagenet_a").test_only


def test_distribution_shift_tests_the_source_and_each_shifted_set_with_their_classes(family_root, tmp_path):
    summary = api.run(config(family_root, tmp_path / "ds", protocol="distribution-shift"), progress=False,
                      echo=False)
    targets = ["imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
    assert summary["source"] == "imagenet" and summary["targets"] == targets
    metrics = summary["per_seed"][0]
    assert {k: metrics[f"{k}_n"] for k in ["imagenet", *targets]} == {
        "imagenet": 8, "imagenet_v2": 8, "imagenet_sketch": 8, "imagenet_a": 2, "imagenet_r": 3}
    assert metrics["average"] == pytest.approx(statistics.fmean(metrics[t] for t in targets))
    assert metrics["test_sets"]["imagenet_a"] == {"dataset": "imagenet_a", "classes": 2, "images": 2}
    recorded = json.loads((tmp_path / "ds/seed1/config.json").read_text())
    assert recorded["protocol"] == "distribution-shift" and recorded["targets"] == targets
    assert recorded["method_options"]["beta"] == 2.0  # CLIPFit's distribution-shift beta (paper Sec. 4.1)


def test_cross_dataset_tests_each_target_with_its_own_classes_and_template(family_root, tmp_path):
    out = tmp_path / "xd"
    summary = api.run(config(family_root, out, protocol="cross-dataset", targets=["eurosat", "caltech101"]),
                      progress=False, echo=False)
    metrics = summary["per_seed"][0]
    assert metrics["eurosat_n"] == 3 * 4 and metrics["caltech101_n"] == 6
    assert metrics["test_sets"]["eurosat"]["classes"] == 3 and metrics["test_sets"]["caltech101"]["classes"] == 2
    assert summary["mean"]["average"] == pytest.approx((metrics["eurosat"] + metrics["caltech101"]) / 2)
    assert json.loads((out / "seed1/config.json").read_text())["method_options"]["beta"] == 8.0  # cross-dataset's
    # The run folder alone evaluates the same test sets again, to the same numbers.
    again = api.evaluate_run(out / "seed1", progress=False)
    for key in ("imagenet", "eurosat", "caltech101", "average"):
        assert again[key] == pytest.approx(metrics[key], abs=1e-9)
    _, method = api.load_run(out / "seed1")
    assert method.classnames == NAMES  # the adapter keeps the source's classes


def test_a_head_that_cannot_name_other_classes_is_refused_before_anything_runs(family_root, tmp_path):
    with pytest.raises(ClipFitError, match="no cross-dataset .* result: use --protocol few-shot"):
        api.run(config(family_root, tmp_path / "lp", method="linear-probe", protocol="cross-dataset"))
    # Distribution shift: V2 and Sketch have ImageNet's classes, so a head takes part; A and R are subsets.
    with pytest.raises(ClipFitError, match="imagenet_a, imagenet_r test other classes .*leave them out of --targets"):
        api.run(config(family_root, tmp_path / "lp", method="linear-probe", protocol="distribution-shift"))
    assert not (tmp_path / "lp").exists()
    summary = api.run(config(family_root, tmp_path / "lp", method="linear-probe", protocol="distribution-shift",
                             targets=["imagenet_v2", "imagenet_sketch"]), progress=False, echo=False)
    assert set(summary["targets"]) == {"imagenet_v2", "imagenet_sketch"}


@pytest.mark.parametrize(("fields", "message"), [
    ({"protocol": "few-shot", "targets": ["eurosat"]}, "--targets applies to the transfer protocols"),
    ({"protocol": "cross-dataset", "targets": ["eurosatt"]}, "unknown dataset 'eurosatt' .*did you mean eurosat"),
    ({"protocol": "cross-dataset", "targets": ["imagenet"]}, "the trained dataset is tested anyway"),
    ({"protocol": "cross-dataset", "targets": ["dtd", "dtd"]}, "--targets dtd: given more than once"),
    ({"protocol": "cross-dataset", "targets": ["imagefolder"]}, "a target is a registered dataset"),
    ({"protocol": "cross-dataset", "targets": []}, "needs at least one target"),
    ({"protocol": "vtab"}, "applies to a VTAB-1k task"),
])
def test_a_protocol_or_target_that_cannot_apply_is_one_line_naming_it(family_root, tmp_path, fields, message):
    with pytest.raises((ClipFitError, DataError), match=message):
        resolve(config(family_root, tmp_path / "x", **fields))


def test_a_missing_target_is_named_before_the_run_folder_is_touched(family_root, tmp_path):
    with pytest.raises(DataError, match="dataset 'dtd'"):
        api.run(config(family_root, tmp_path / "x", protocol="cross-dataset", targets=["dtd"]))
    assert not (tmp_path / "x").exists()


def test_cross_dataset_from_the_command_line_with_targets(family_root, tmp_path, capsys):
    main(["train", "--method", "zeroshot", "--model", TINY_MODEL, "--pretrained", "none", "--dataset", "imagenet",
          "--data-root", str(family_root), "--protocol", "cross-dataset", "--targets", "eurosat", "caltech101",
          "--seeds", "1", "--no-progress", "--out", str(tmp_path / "zs")])
    printed = capsys.readouterr().out
    assert "EuroSAT" in printed and "Caltech101" in printed and "Average" in printed
    assert "the trained dataset (imagenet) is not in it" in " ".join(printed.split())


def test_runs_recorded_before_targets_keep_their_identity_and_folder(tmp_path):
    few_shot = resolve(RunConfig(method="clipfit", model=TINY_MODEL, pretrained="none", dataset="eurosat",
                                 data_root=str(tmp_path), out=str(tmp_path / "o")))
    assert few_shot.targets is None and "targets" not in setting(few_shot)
    assert "templates" not in setting(few_shot)
    assert default_out(few_shot) == default_out(RunConfig.from_dict(
        {k: v for k, v in json.loads(few_shot.to_json()).items() if k != "targets"}))


def test_the_few_shot_draw_is_fingerprinted_the_same_wherever_the_dataset_lies(family_root, tmp_path):
    copy = tmp_path / "elsewhere"
    shutil.copytree(family_root / "imagenet", copy / "imagenet")
    first = data.fewshot(data.load_dataset("imagenet", family_root), 2, 1, cache_dir=tmp_path / "c1")
    second = data.fewshot(data.load_dataset("imagenet", copy), 2, 1, cache_dir=tmp_path / "c2")
    assert draw_sha256(first.train, str(family_root)) == draw_sha256(second.train, str(copy))
    other_seed = data.fewshot(data.load_dataset("imagenet", copy), 2, 2, cache_dir=tmp_path / "c2")
    assert draw_sha256(other_seed.train, str(copy)) != draw_sha256(second.train, str(copy))


def test_each_run_records_the_sha256_of_its_draw_and_of_its_split_file(family_root, tmp_path):
    out = tmp_path / "fs"
    summary = api.run(config(family_root, out, dataset="eurosat", protocol="few-shot"), progress=False, echo=False)
    metrics = summary["per_seed"][0]
    splits = data.fewshot(data.load_dataset("eurosat", family_root), 2, 1,
                          cache_dir=family_root / "eurosat/split_fewshot")
    assert metrics["fewshot_sha256"] == draw_sha256(splits.train, str(family_root))
    from clipfit.files import file_sha256

    assert metrics["split_sha256"] == file_sha256(family_root / "eurosat/split_zhou_EuroSAT.json")
