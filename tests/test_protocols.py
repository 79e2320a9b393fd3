"""Protocols and run folders, end to end through the command line on a tiny random-init CLIP."""

from __future__ import annotations

import json
import math

import pytest
from safetensors import safe_open

from clipfit import api
from clipfit.cli import main
from clipfit.errors import ClipFitError
from clipfit.protocols import harmonic_mean

from conftest import TINY_MODEL


def train_args(root, out, *extra):
    return ["train", "--method", "clipfit", "--model", TINY_MODEL, "--pretrained", "none", "--dataset", "eurosat",
            "--data-root", str(root), "--shots", "4", "--epochs", "2", "--batch-size", "8", "--lr", "0.5",
            "--no-progress", "--out", str(out), *extra]


def test_harmonic_mean_of_base_and_new():
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert harmonic_mean(0.0, 0.0) == 0.0


def test_base2new_run_writes_config_log_metrics_and_adapter_per_seed(eurosat_root, tmp_path, capsys):
    out = tmp_path / "b2n"
    main(train_args(eurosat_root, out, "--protocol", "base2new", "--seeds", "1", "2"))
    printed = capsys.readouterr().out
    assert "Base" in printed and "New" in printed and "HM" in printed

    summary = json.loads((out / "summary.json").read_text())
    assert [m["seed"] for m in summary["per_seed"]] == [1, 2]
    for key in ("base", "new"):
        values = [m[key] for m in summary["per_seed"]]
        assert summary["mean"][key] == pytest.approx(sum(values) / 2)
    assert summary["mean"]["hm"] == pytest.approx(harmonic_mean(summary["mean"]["base"], summary["mean"]["new"]))
    for m in summary["per_seed"]:
        assert m["hm"] == pytest.approx(harmonic_mean(m["base"], m["new"]))
        assert m["base_n"] == 2 * 4 and m["new_n"] == 2 * 4  # 2 of the 4 classes each, 4 test images per class

    seed1 = out / "seed1"
    assert {p.name for p in seed1.iterdir()} == {"config.json", "log.txt", "metrics.json", "adapter.safetensors"}
    config = json.loads((seed1 / "config.json").read_text())
    assert config["method_options"]["beta"] == 8.0  # the base-to-new default
    assert config["optim"]["epochs"] == 2 and config["template"] == "a centered satellite photo of {}."
    with safe_open(str(seed1 / "adapter.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta["model"] == TINY_MODEL and meta["method"] == "clipfit"
    assert json.loads(meta["classnames"]) == ["annual crop", "forest"]  # the base half: first ceil(4/2) labels
    assert "epoch=2" in (seed1 / "log.txt").read_text()


def test_eval_and_predict_rebuild_the_tuned_model_from_the_run_folder(eurosat_root, tmp_path, capsys):
    out = tmp_path / "b2n"
    main(train_args(eurosat_root, out, "--protocol", "base2new", "--seeds", "1"))
    metrics = json.loads((out / "seed1" / "metrics.json").read_text())
    again = api.evaluate_run(out / "seed1", progress=False)
    assert again["base"] == metrics["base"] and again["new"] == metrics["new"]
    new_only = api.evaluate_run(out / "seed1", split="new", progress=False)
    assert new_only["new"] == metrics["new"]

    capsys.readouterr()
    image = next((eurosat_root / "eurosat" / "2750" / "Forest").iterdir())
    main(["predict", "--run", str(out / "seed1"), str(image), "--top-k", "2"])
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(image)) and "annual crop" in line and "forest" in line


def test_same_seed_and_config_give_the_same_numbers(eurosat_root, tmp_path):
    main(train_args(eurosat_root, tmp_path / "a", "--seeds", "3"))
    main(train_args(eurosat_root, tmp_path / "b", "--seeds", "3"))
    a = json.loads((tmp_path / "a" / "seed3" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "seed3" / "metrics.json").read_text())
    assert a["accuracy"] == b["accuracy"] and a["final_train_loss"] == b["final_train_loss"]


def test_rerun_reuses_finished_seeds_and_refuses_a_changed_config(eurosat_root, tmp_path, capsys):
    out = tmp_path / "run"
    main(train_args(eurosat_root, out, "--seeds", "1"))
    adapter = out / "seed1" / "adapter.safetensors"
    stamp = adapter.stat().st_mtime_ns
    capsys.readouterr()
    main(train_args(eurosat_root, out, "--seeds", "1"))
    assert "already done" in capsys.readouterr().out
    assert adapter.stat().st_mtime_ns == stamp

    with pytest.raises(SystemExit) as exit_info:
        main(train_args(eurosat_root, out, "--seeds", "1", "--beta", "1.5"))
    assert exit_info.value.code == 2
    assert "different config (differs in: method_options)" in capsys.readouterr().err
    assert adapter.stat().st_mtime_ns == stamp


def test_a_run_on_weights_that_have_since_changed_is_neither_reused_nor_rebuilt(eurosat_root, tmp_path, capsys):
    from safetensors.torch import save_file

    from clipfit.backbone import load_backbone

    weights = tmp_path / "tiny.safetensors"
    state = load_backbone(TINY_MODEL, "none").model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    out = tmp_path / "run"
    args = [a if a != "none" else str(weights) for a in train_args(eurosat_root, out, "--seeds", "1")]
    main(args)
    metrics = (out / "seed1" / "metrics.json").read_bytes()
    assert json.loads(metrics)["weights"].startswith("sha256:")
    api.evaluate_run(out / "seed1", progress=False)

    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, str(weights))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert "holds a finished run on other base weights" in capsys.readouterr().err
    assert (out / "seed1" / "metrics.json").read_bytes() == metrics
    with pytest.raises(ClipFitError, match="adapter.safetensors: trained on .* retrain it on these weights"):
        api.evaluate_run(out / "seed1", progress=False)


def test_a_run_config_file_alone_reruns_the_run(eurosat_root, tmp_path):
    main(train_args(eurosat_root, tmp_path / "first", "--seeds", "2"))
    config = json.loads((tmp_path / "first" / "seed2" / "config.json").read_text())
    config["out"] = str(tmp_path / "second")
    (tmp_path / "config.json").write_text(json.dumps(config))
    main(["train", "--config", str(tmp_path / "config.json"), "--no-progress"])
    first = json.loads((tmp_path / "first" / "seed2" / "metrics.json").read_text())
    second = json.loads((tmp_path / "second" / "seed2" / "metrics.json").read_text())
    assert first["accuracy"] == second["accuracy"]


def test_zero_shot_is_a_method_with_no_training(eurosat_root, tmp_path):
    main(["train", "--method", "zeroshot", "--model", TINY_MODEL, "--pretrained", "none", "--dataset", "eurosat",
          "--data-root", str(eurosat_root), "--protocol", "base2new", "--shots", "4", "--seeds", "1", "--no-progress",
          "--out", str(tmp_path / "zs")])
    metrics = json.loads((tmp_path / "zs" / "seed1" / "metrics.json").read_text())
    assert metrics["trainable_parameters"] == 0 and metrics["final_train_loss"] is None
    assert 0.0 <= metrics["hm"] <= 100.0 and not math.isnan(metrics["hm"])


def test_imagefolder_few_shot_from_python(image_folder, tmp_path):
    config = api.RunConfig(method="clipfit", model=TINY_MODEL, pretrained="none", dataset="imagefolder",
                           data_root=str(image_folder), protocol="few-shot", shots=2, seeds=[1],
                           optim=api.OptimConfig(epochs=1), out=str(tmp_path / "mine"))
    summary = api.run(config, progress=False, echo=False)
    assert summary["per_seed"][0]["accuracy_n"] > 0
    assert summary["per_seed"][0]["trainable_parameters"] > 0


def test_unknown_config_field_and_method_option_are_named(tmp_path, capsys):
    (tmp_path / "bad.json").write_text(json.dumps({"modle": "ViT-B-16"}))
    with pytest.raises(SystemExit):
        main(["train", "--config", str(tmp_path / "bad.json")])
    assert "unknown field(s) modle" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--option", "gamma=3", "--dataset", "eurosat", "--data-root", str(tmp_path)])
    assert "no option(s) gamma" in capsys.readouterr().err


def test_eval_on_another_dataset_uses_all_its_classes_and_its_template(eurosat_root, image_folder, tmp_path):
    out = tmp_path / "b2n"
    main(train_args(eurosat_root, out, "--protocol", "base2new", "--seeds", "1"))
    metrics = api.evaluate_run(out / "seed1", dataset="imagefolder", data_root=str(image_folder), progress=False)
    assert set(metrics) == {"accuracy", "accuracy_n", "test_sets"}  # all classes: "accuracy", as in a few-shot run
    assert metrics["test_sets"] == {"accuracy": {"dataset": "photos", "classes": 3, "images": 3 * round(12 * 0.2)}}
    assert metrics["accuracy_n"] == 3 * round(12 * 0.2)  # 3 classes, the seeded 70/10/20 split's test share
    _, method = api.load_run(out / "seed1")
    assert method.classnames == ["annual crop", "forest"]
