"""The PEFT-for-CLIP study's command line (Andy-LZH/peft4clip `train.py`, its README's command) as `clipfit study`,
and the `vtab` protocol it runs, end to end on a VTAB-1k task folder in NOAH's list layout."""

from __future__ import annotations

import dataclasses
import json

import pytest

from clipfit import api, backbone
from clipfit.cli import main
from clipfit.errors import ClipFitError
from clipfit.study import BACKBONES, STRATEGIES, StudyArgs, study_config

from conftest import TINY_MODEL, make_vtab_task


@pytest.mark.parametrize(("name", "expected"), [
    ("ViT-B16", ("ViT-B-16", "openai")), ("vit-b32", ("ViT-B-32", "openai")), ("VIT-L14", ("ViT-L-14", "openai")),
    # The README's spelling of the config key MetaCLIP-B32-400M.
    ("MetaCLIP-B32-400m", ("ViT-B-32-quickgelu", "metaclip_400m")),
    ("MetaCLIP-B16-2.5B", ("ViT-B-16-quickgelu", "metaclip_fullcc")),
])
def test_the_studys_backbone_names_map_to_open_clip_in_either_case(name, expected):
    config = study_config(StudyArgs("vtab-cifar100", backbone=name))
    assert (config.model, config.pretrained) == expected
    assert expected[0].removesuffix("-quickgelu") in {arch.removesuffix("-quickgelu") for arch, _ in BACKBONES.values()}


def test_the_studys_strategies_map_to_registered_methods_with_its_classifier_type():
    from clipfit.methods import METHODS

    assert set(STRATEGIES.values()) <= set(METHODS)
    config = study_config(StudyArgs("vtba-dtd", model="CLIP-Adapter", type="vision-language", shots=-1, seeds=(1, 2)))
    assert (config.method, config.method_options, config.dataset) == ("clip-adapter", {"type": "vision-language"},
                                                                      "vtab-dtd")
    assert (config.protocol, config.shots, config.seeds) == ("vtab", 0, [1, 2])  # -1: the whole training pool


@pytest.mark.parametrize(("args", "message"), [
    (StudyArgs("vtab-cifar100", backbone="ViT-H14"), "--backbone ViT-H14: not one of the study's backbones"),
    (StudyArgs("vtab-cifar100", model="LoRA"), "--model LoRA: not one of the study's strategies"),
    (StudyArgs("vtab-cifar1000"), "unknown dataset 'vtab-cifar1000'"),
    (StudyArgs("vtab-cifar100", shots=0), "--shots must be a whole number >= 1, or -1"),
])
def test_a_study_argument_it_does_not_know_is_one_line_naming_it(args, message):
    with pytest.raises(ClipFitError, match=message):
        study_config(args)


def test_the_readme_command_runs_as_written_and_offline_ends_in_the_no_weights_line(tmp_path, monkeypatch, capsys):
    root = make_vtab_task(tmp_path / "data", "vtab-1k/cifar")
    monkeypatch.setattr(backbone, "_hub_reachable", lambda host, timeout=3.0: False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("CLIPFIT_DATA", str(root))
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "--data", "vtab-cifar100", "--backbone", "ViT-B16", "--model", "VPT-CLIP-Shallow", "--type",
              "vision", "--shots", "16", "--seeds", "1", "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unrecognized arguments" not in err
    assert "ViT-B-16/openai are not cached" in err
    with pytest.raises(SystemExit):  # the code's spelling of the seed flag
        main(["study", "--data", "vtab-cifar100", "--seed", "0", "--out", str(tmp_path / "run")])
    assert "not cached" in capsys.readouterr().err


def test_a_study_run_on_a_vtab_task_trains_on_train800val200_with_the_studys_recipe(tmp_path):
    root = make_vtab_task(tmp_path / "data", "vtab-1k/dtd", per_list=(2, 1, 2))
    config = study_config(StudyArgs("vtba-dtd", model="VPT-CLIP-Deep", shots=-1, seeds=(1,)), data_root=str(root),
                          out=str(tmp_path / "run"))
    config = dataclasses.replace(config, model=TINY_MODEL, pretrained="none")
    summary = api.run(api.replace_config(config, optim={"epochs": 1}), progress=False, echo=False)
    recorded = json.loads((tmp_path / "run/seed1/config.json").read_text())
    # configs/VPT-CLIP-Deep/dtd.yaml: N 10, lr 1, wd 1e-4, SGD at a constant lr (epochs set to 1 here).
    assert recorded["method_options"]["num_tokens"] == 10 and recorded["method_options"]["type"] == "vision"
    assert (recorded["optim"]["lr"], recorded["optim"]["schedule"]) == (1.0, "constant")
    metrics = summary["per_seed"][0]
    assert metrics["accuracy_n"] == 3 * 2  # test.txt: 3 classes x 2
    assert metrics["test_sets"]["accuracy"]["dataset"] == "vtab-dtd"
    from clipfit import data
    from clipfit.runner import draw_sha256

    trained = data.load_dataset("vtab-dtd", root).train  # train800val200, all of it (--shots -1)
    assert len(trained) == 3 * 3 and metrics["fewshot_sha256"] == draw_sha256(trained, str(root))


def test_a_method_that_searches_on_validation_trains_on_train800_and_searches_on_val200(tmp_path):
    root = make_vtab_task(tmp_path / "data", "vtab-1k/eurosat", per_list=(3, 2, 2))
    common = {"model": TINY_MODEL, "pretrained": "none", "dataset": "vtab-eurosat", "protocol": "vtab",
              "data_root": str(root), "shots": 0, "seeds": [1]}
    from clipfit.config import RunConfig
    from clipfit.runner import check_data, resolve

    searched, _ = check_data(resolve(RunConfig(method="linear-probe", out=str(tmp_path / "lp"), **common)))
    plain, _ = check_data(resolve(RunConfig(method="zeroshot", out=str(tmp_path / "zs"), **common)))
    lp, zs = searched[1], plain[1]
    assert len(lp.train) == 3 * 3 and len(lp.val) == 3 * 2  # train800 and val200
    assert {s.path for s in lp.train}.isdisjoint(s.path for s in lp.val)
    assert len(zs.train) == 3 * 5 and [s.path for s in lp.test] == [s.path for s in zs.test]  # test.txt for both


def test_the_vtab_protocol_trains_on_the_evaluation_transform_unless_told_otherwise(tmp_path):
    from clipfit.config import RunConfig
    from clipfit.runner import image_datasets, resolve
    from clipfit.store import setting

    common = {"method": "clipfit", "model": TINY_MODEL, "pretrained": "none", "data_root": str(tmp_path),
              "out": str(tmp_path / "o")}
    vtab = resolve(RunConfig(dataset="vtab-dtd", protocol="vtab", **common))
    assert vtab.augment is False and setting(vtab)["augment"] is False
    few_shot = resolve(RunConfig(dataset="eurosat", **common))
    # On by default elsewhere, and left out of the identity, so runs recorded before the field keep theirs.
    assert few_shot.augment is True and "augment" not in setting(few_shot)
    assert resolve(RunConfig(dataset="vtab-dtd", protocol="vtab", augment=True, **common)).augment is True
    skeleton = backbone.load_backbone(TINY_MODEL, "none")
    train, test = image_datasets(skeleton, vtab)
    assert repr(train([]).transform) == repr(test([]).transform)
    train, test = image_datasets(skeleton, few_shot)
    assert "RandomResizedCrop" in repr(train([]).transform) and "RandomResizedCrop" not in repr(test([]).transform)


def test_an_alias_is_its_dataset_one_setting_one_folder_one_recipe(tmp_path):
    from clipfit.config import RunConfig
    from clipfit.runner import resolve

    common = {"method": "vpt-deep", "model": TINY_MODEL, "pretrained": "none", "protocol": "vtab",
              "data_root": str(tmp_path)}
    by_alias, by_name = (resolve(RunConfig(dataset=name, **common)) for name in ("vtba-dtd", "vtab-dtd"))
    assert by_alias.dataset == "vtab-dtd" and by_alias.out == by_name.out
    assert by_alias.method_options["num_tokens"] == 10  # configs/VPT-CLIP-Deep/dtd.yaml
    transfer = resolve(RunConfig(dataset="imagenet", targets=["vtba-dtd"],
                                 **{**common, "method": "clipfit", "protocol": "cross-dataset"}))
    assert transfer.targets == ["vtab-dtd"]
