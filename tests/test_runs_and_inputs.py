"""Run folders that cannot be mixed up and inputs that cannot slip through: concurrent runs, kills,
interrupted overwrites, moved folders, leftovers, and every option validated before anything runs."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from clipfit import api
from clipfit.cli import main
from clipfit.config import OptimConfig, RunConfig
from clipfit.errors import ClipFitError
from clipfit.runner import resolve

from conftest import TINY_MODEL

TESTS = Path(__file__).parent
# The CLI in a process of its own, with the tests' tiny model configs registered.
CLI = [sys.executable, "-c", "import sys, open_clip; open_clip.add_model_config(sys.argv.pop(1)); "
       "from clipfit.cli import main; main(sys.argv[1:])", str(TESTS / "model_configs")]


def train_args(root, out, *extra):
    return ["train", "--model", TINY_MODEL, "--pretrained", "none", "--dataset", "eurosat", "--data-root", str(root),
            "--shots", "2", "--batch-size", "4", "--no-progress", "--out", str(out), *extra]


def dead_pid() -> int:
    """The pid of a process that has exited."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def wait_for(condition, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def lock_held(path: Path) -> bool:
    try:
        return bool(path.read_text().strip())
    except FileNotFoundError:
        return False


# 1. Two runs into one folder ------------------------------------------------------------------------

@pytest.mark.slow  # three CLI processes, one training 600 epochs: 20 s or more
def test_a_seed_folder_is_written_by_one_process_and_another_setting_is_refused(eurosat_root, tmp_path):
    out = tmp_path / "run"
    # About 50 s of training (1,500 epochs of 2 steps): the two others start and check while it holds the seed
    # (each start imports torch and open_clip, which imports transformers where it is installed: seconds each,
    # more on a loaded machine).
    slow = subprocess.Popen([*CLI, *train_args(eurosat_root, out, "--seeds", "1", "--epochs", "1500")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: lock_held(out / ".seed1.lock"))
        same, other = [
            subprocess.Popen([*CLI, *train_args(eurosat_root, out, "--seeds", "1", "--epochs", epochs)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for epochs in ("1500", "3")
        ]
        for proc in (same, other):
            proc.stdout, proc.stderr = proc.communicate(timeout=600)
        assert slow.poll() is None, "the first run must still be training for this test to mean anything"
    finally:
        _, slow_err = slow.communicate(timeout=600)
    assert slow.returncode == 0, slow_err
    assert same.returncode == 2
    assert same.stderr.strip().splitlines() == [same.stderr.strip()]  # one line
    assert f"seed folder {out / 'seed1'} is being written by pid {slow.pid}" in same.stderr
    assert other.returncode == 2 and "holds runs of a different config (differs in: optim.epochs)" in other.stderr
    config = json.loads((out / "seed1" / "config.json").read_text())
    metrics = json.loads((out / "seed1" / "metrics.json").read_text())
    assert config["optim"]["epochs"] == 1500 and metrics["seed"] == 1
    assert json.loads((out / "summary.json").read_text())["seeds"] == [1]


@pytest.mark.slow  # two CLI processes training 30 epochs each
def test_two_processes_with_different_seeds_leave_one_summary_with_both(eurosat_root, tmp_path):
    out = tmp_path / "run"
    procs = [subprocess.Popen([*CLI, *train_args(eurosat_root, out, "--seeds", str(seed), "--epochs", "30")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [1, 2]
    assert [m["seed"] for m in summary["per_seed"]] == [1, 2]


def test_a_killed_run_leaves_no_lock_and_no_finished_looking_seed(eurosat_root, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([*CLI, *train_args(eurosat_root, out, "--seeds", "1", "--epochs", "100")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: (out / "seed1" / "log.txt").is_file() and "epoch=" in (out / "seed1" / "log.txt").read_text())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "seed1" / "metrics.json").exists()
    with pytest.raises(ClipFitError, match=r"seed1: the run did not finish \(no metrics.json\)"):
        api.evaluate_run(out / "seed1", progress=False)
    # The lock died with its holder: a shorter rerun into the same folder takes the seed at once.
    main(train_args(eurosat_root, out, "--seeds", "1", "--epochs", "2", "--overwrite"))
    assert json.loads((out / "seed1" / "metrics.json").read_text())["seed"] == 1


# 2. A seed is finished only when its last file is written, and its files belong together -------------

def test_an_interrupted_overwrite_leaves_a_seed_that_eval_predict_and_reruns_refuse(
    eurosat_root, tmp_path, monkeypatch
):
    import clipfit.runner as runner

    out = tmp_path / "run"
    main(train_args(eurosat_root, out, "--seeds", "1", "--epochs", "2"))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "train", killed)
    with pytest.raises(SystemExit):
        main(train_args(eurosat_root, out, "--seeds", "1", "--epochs", "2", "--beta", "3", "--overwrite"))
    monkeypatch.undo()
    assert json.loads((out / "summary.json").read_text())["seeds"] == []  # no longer claims seed 1 finished
    seed1 = out / "seed1"
    assert json.loads((seed1 / "config.json").read_text())["method_options"]["beta"] == 3.0
    assert not (seed1 / "adapter.safetensors").exists() and not (seed1 / "metrics.json").exists()
    with pytest.raises(ClipFitError, match="did not finish"):
        api.evaluate_run(seed1, progress=False)
    with pytest.raises(ClipFitError, match="did not finish"):
        api.predict(seed1, [next((eurosat_root / "eurosat" / "2750").rglob("*.png"))])


def test_a_seed_whose_adapter_is_missing_or_foreign_is_redone_not_reused(eurosat_root, tmp_path, capsys):
    main(train_args(eurosat_root, tmp_path / "a", "--seeds", "1", "--epochs", "2"))
    main(train_args(eurosat_root, tmp_path / "b", "--seeds", "1", "--epochs", "2", "--lr", "0.5"))
    seed1 = tmp_path / "a" / "seed1"
    shutil.copy(tmp_path / "b" / "seed1" / "adapter.safetensors", seed1 / "adapter.safetensors")
    with pytest.raises(ClipFitError, match="adapter.safetensors is not the adapter metrics.json measured"):
        api.load_run(seed1)
    capsys.readouterr()
    main(train_args(eurosat_root, tmp_path / "a", "--seeds", "1", "--epochs", "2"))
    assert "adapter.safetensors is not the adapter metrics.json measured; redoing this seed" in capsys.readouterr().out
    api.load_run(seed1)
    (seed1 / "adapter.safetensors").unlink()
    main(train_args(eurosat_root, tmp_path / "a", "--seeds", "1", "--epochs", "2"))
    assert "adapter.safetensors is missing; redoing this seed" in capsys.readouterr().out
    assert (seed1 / "adapter.safetensors").is_file()


# 3. A run's identity ----------------------------------------------------------------------------------

def test_a_seed_folder_copied_from_another_seed_is_refused(eurosat_root, tmp_path, capsys):
    out = tmp_path / "run"
    main(train_args(eurosat_root, out, "--seeds", "2", "--epochs", "1"))
    shutil.copytree(out / "seed2", out / "seed3")
    with pytest.raises(SystemExit):
        main(train_args(eurosat_root, out, "--seeds", "3", "--epochs", "1"))
    assert f"{out / 'seed3'}: holds the run of seed 2, not of seed 3" in capsys.readouterr().err


@pytest.mark.parametrize("name, content", [("metrics.json", '{"acc'), ("metrics.json", "[1, 2]"), ("config.json", "{"),
                                           ("summary.json", "xx"), ("summary.json", "[]")])
def test_a_damaged_file_in_a_run_folder_is_one_line_naming_it(eurosat_root, tmp_path, capsys, name, content):
    out = tmp_path / "run"
    main(train_args(eurosat_root, out, "--seeds", "1", "--epochs", "1"))
    damaged = out / name if name == "summary.json" else out / "seed1" / name
    damaged.write_text(content)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(train_args(eurosat_root, out, "--seeds", "1", "--epochs", "1"))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err
    assert err.startswith((f"clipfit: error: {damaged}: damaged",
                           f"clipfit: error: {damaged}: not valid JSON"))
    if name != "summary.json":
        with pytest.raises(SystemExit):
            main(["eval", "--run", str(out / "seed1"), "--no-progress"])
        assert str(damaged) in capsys.readouterr().err


def test_settings_that_move_no_number_do_not_block_a_resume(eurosat_root, tmp_path, capsys):
    out = tmp_path / "run"
    main(train_args(eurosat_root, out, "--seeds", "1", "--epochs", "1"))
    capsys.readouterr()
    main(train_args(eurosat_root, out, "--seeds", "1", "--epochs", "1", "--num-workers", "1", "--image-cache-mb", "10",
                    "--device", "cpu", "--no-decode"))
    assert "already done, reusing its metrics" in capsys.readouterr().out


def test_a_run_recorded_before_the_optimiser_fields_existed_is_reused(eurosat_root, tmp_path, capsys):
    # Runs finished before AdamW and per-iteration schedules existed record no optimizer / schedule /
    # iterations / min_lr / eps; they trained with Dassl's values of them, so they are the same setting.
    out = tmp_path / "run"
    main(train_args(eurosat_root, out, "--seeds", "1", "--epochs", "1"))
    new_fields = ("optimizer", "schedule", "iterations", "min_lr", "eps")
    config_file, metrics_file = out / "seed1" / "config.json", out / "seed1" / "metrics.json"
    summary_file = out / "summary.json"
    config = json.loads(config_file.read_text())
    assert config["optim"]["optimizer"] == "sgd" and config["optim"]["schedule"] == "cosine-epochs"
    for key in new_fields:
        del config["optim"][key]
    text = json.dumps(config, indent=2, sort_keys=True)
    config_file.write_text(text)
    metrics = json.loads(metrics_file.read_text())
    metrics["config_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    metrics_file.write_text(json.dumps(metrics))
    summary = json.loads(summary_file.read_text())
    for key in new_fields:
        del summary["setting"]["optim"][key]
    summary_file.write_text(json.dumps(summary))
    capsys.readouterr()
    main(train_args(eurosat_root, out, "--seeds", "1", "--epochs", "1"))
    assert "already done, reusing its metrics" in capsys.readouterr().out


def test_the_advice_for_an_unfinished_seed_reruns_it_where_it_now_is(eurosat_root, tmp_path):
    main(train_args(eurosat_root, tmp_path / "here", "--seeds", "1", "--epochs", "1"))
    shutil.move(tmp_path / "here", tmp_path / "there")
    (tmp_path / "there" / "seed1" / "metrics.json").unlink()
    with pytest.raises(ClipFitError) as err:
        api.load_run(tmp_path / "there" / "seed1")
    assert str(err.value).endswith(f"--out {tmp_path / 'there'}")


def test_orphan_temp_files_in_a_reused_seed_folder_are_removed(eurosat_root, tmp_path):
    out = tmp_path / "run"
    main(train_args(eurosat_root, out, "--seeds", "1", "--epochs", "1"))
    orphan = out / "seed1" / f".adapter.safetensors.{dead_pid()}-x.tmp"
    orphan.write_text("half")
    main(train_args(eurosat_root, out, "--seeds", "1", "--epochs", "1"))
    assert not orphan.exists()


def test_the_default_out_differs_whenever_the_setting_does():
    base = RunConfig(dataset="eurosat", data_root="/data", model="ViT-B-32")
    outs = {resolve(c).out for c in (base, RunConfig(**{**base.__dict__, "optim": OptimConfig(lr=0.01)}),
                                     RunConfig(**{**base.__dict__, "optim": OptimConfig(epochs=10)}),
                                     RunConfig(**{**base.__dict__, "model": "ViT-B-16"}),
                                     RunConfig(**{**base.__dict__, "pretrained": "laion2b_s34b_b79k"}))}
    assert len(outs) == 5
    assert resolve(base).out == resolve(RunConfig(**{**base.__dict__, "seeds": [4]})).out
    assert resolve(base).out.startswith("runs/eurosat-few-shot-16shot-clipfit-ViT-B-32-")


def test_a_moved_run_folder_is_reused_where_it_now_is(eurosat_root, tmp_path, capsys):
    main(train_args(eurosat_root, tmp_path / "here", "--seeds", "1", "--epochs", "2"))
    shutil.move(tmp_path / "here", tmp_path / "there")
    capsys.readouterr()
    main(train_args(eurosat_root, tmp_path / "there", "--seeds", "1", "--epochs", "2"))
    assert "already done, reusing its metrics" in capsys.readouterr().out


# 4. Leftovers and file modes ----------------------------------------------------------------------------

def test_temp_files_of_killed_writers_are_removed_and_live_ones_kept(eurosat_root, tmp_path):
    out = tmp_path / "run"
    main(train_args(eurosat_root, out, "--seeds", "1", "--epochs", "1"))
    orphan = out / "seed1" / f".metrics.json.{dead_pid()}-abc.tmp"
    live = out / "seed1" / f".metrics.json.{os.getpid()}-abc.tmp"
    orphan.write_text("half")
    live.write_text("being written")
    main(train_args(eurosat_root, out, "--seeds", "1", "--epochs", "1", "--overwrite"))
    assert not orphan.exists() and live.exists()


def test_half_drawn_mini_tasks_of_killed_generations_are_removed(tmp_path):
    from clipfit_world.tasks import generate_task

    orphan = tmp_path / f".mini_colors.tmp-{dead_pid()}"
    (orphan / "images").mkdir(parents=True)
    generate_task("mini_colors", tmp_path)
    assert not orphan.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mini_colors"]


def test_a_damaged_task_marker_redraws_the_task(tmp_path):
    from clipfit_world.tasks import VERSION_FILE, generate_task

    folder = generate_task("mini_colors", tmp_path)
    (folder / VERSION_FILE).write_text("{not json")
    assert generate_task("mini_colors", tmp_path) == folder
    assert json.loads((folder / VERSION_FILE).read_text())["task"] == "mini_colors"


@pytest.mark.parametrize("bad", [["--template", "a {} of {}"], ["--epochs", "0"]])
def test_a_run_refused_up_front_leaves_no_folder(eurosat_root, tmp_path, bad):
    with pytest.raises(SystemExit):
        main(train_args(eurosat_root, tmp_path / "run", *bad))
    assert not (tmp_path / "run").exists()


def test_a_run_on_an_unloadable_checkpoint_leaves_no_folder(eurosat_root, tmp_path):
    checkpoint = tmp_path / "broken.safetensors"
    checkpoint.write_bytes(b"not a checkpoint")
    args = train_args(eurosat_root, tmp_path / "run")
    args[args.index("none")] = str(checkpoint)
    with pytest.raises(SystemExit):
        main(args)
    assert not (tmp_path / "run").exists()


def test_results_respect_the_umask_so_colleagues_can_read_them(eurosat_root, tmp_path):
    old = os.umask(0o022)
    try:
        main(train_args(eurosat_root, tmp_path / "run", "--seeds", "1", "--epochs", "1"))
    finally:
        os.umask(old)
    for name in ("config.json", "metrics.json", "adapter.safetensors"):
        assert (tmp_path / "run" / "seed1" / name).stat().st_mode & 0o777 == 0o644, name
    assert (tmp_path / "run" / "summary.json").stat().st_mode & 0o777 == 0o644


# 5. Every numeric option validated up front -----------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "epochs must be a whole number >= 1, got 0"),
    (["--shots", "-3"], "shots must be a whole number >= 0 (0: every training image), got -3"),
    (["--seeds", "1", "1", "2"], "seeds must differ: 1 is given more than once"),
    (["--lr", "nan"], "lr must be a finite number > 0, got nan"),
    (["--lr", "-1"], "lr must be a finite number > 0, got -1.0"),
    (["--batch-size", "0"], "batch-size must be a whole number >= 1, got 0"),
    (["--seeds", str(2**40)], f"seed must be a whole number from 0 to {2**32 - 1}, got {2**40}"),
    (["--template", "a {} of {}"],
     "prompt template 'a {} of {}' must have exactly one '{}' for the class name, and it has 2 '{}'"),
    (["--template", "a {name}"],
     "prompt template 'a {name}' must have exactly one '{}' for the class name, and it has a named field {name}"),
    (["--image-cache-mb", "-1"], "image_cache_mb must be a whole number >= 0, got -1"),
    (["--device", "gpu7"],
     "device must be auto, cpu, cuda, cuda:N or another torch device, got 'gpu7' (available here: cpu)"),
    (["--pretrained", ""], "pretrained must be an open_clip tag, a checkpoint file, 'builtin' or 'none', got ''"),
    (["--num-workers", "100000"],
     f"num_workers must be at most {4 * (os.cpu_count() or 1)} (4 per CPU core), got 100000"),
    (["--option", "beta=nan"], "method clipfit: beta must be a finite number >= 0, got nan"),
    (["--option", "beta=1", "--option", "beta=2"], "--option beta is given more than once"),
    (["--option", "regularizer=3"], "method 'clipfit': option: field 'regularizer' must be a string, got 3"),
])
def test_a_bad_option_is_one_line_naming_it_before_anything_runs(eurosat_root, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(train_args(eurosat_root, tmp_path / "run", *args))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err == f"clipfit: error: {message}"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:3", "gpu"])
def test_a_device_this_machine_lacks_is_one_line_in_every_command(eurosat_root, tmp_path, capsys, device):
    main(train_args(eurosat_root, tmp_path / "run", "--seeds", "1", "--epochs", "1"))
    capsys.readouterr()
    image = next((eurosat_root / "eurosat" / "2750").rglob("*.png"))
    for command in (train_args(eurosat_root, tmp_path / "other", "--device", device),
                    ["eval", "--run", str(tmp_path / "run" / "seed1"), "--device", device],
                    ["predict", "--run", str(tmp_path / "run" / "seed1"), "--device", device, str(image)]):
        with pytest.raises(SystemExit):
            main(command)
        err = capsys.readouterr().err.strip()
        assert err.startswith("clipfit: error: device") and f"'{device}'" in err
        assert err.endswith("(available here: cpu)")
    assert not (tmp_path / "other").exists()


def test_a_checkpoint_path_that_is_a_folder_says_so(eurosat_root, tmp_path, capsys):
    (tmp_path / "weights.pt").mkdir()
    args = train_args(eurosat_root, tmp_path / "run")
    args[args.index("none")] = str(tmp_path / "weights.pt")
    with pytest.raises(SystemExit):
        main(args)
    assert capsys.readouterr().err.strip().endswith(f"{tmp_path / 'weights.pt'} is a folder, not a checkpoint file")


def test_predict_refuses_a_top_k_below_one(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--run", "nowhere", "--top-k", "-1", "x.png"])
    assert capsys.readouterr().err.strip() == "clipfit: error: --top-k must be a whole number >= 1, got -1"


def test_training_stops_at_the_first_non_finite_step_and_writes_no_result(eurosat_root, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit):
        main(train_args(eurosat_root, out, "--seeds", "1", "--epochs", "3", "--lr", "1e38"))
    err = capsys.readouterr().err
    # Epoch 1 is the warm-up at 1e-5; the first step at lr 1e38 throws the parameters far enough for the
    # next loss (or the parameters themselves) to overflow.
    assert re.search(r"^clipfit: error: training diverged: .* at epoch 2, step [12] \(lr 1e\+38\); "
                     r"no result is written$", err.strip())
    assert not (out / "seed1" / "metrics.json").exists() and not (out / "seed1" / "adapter.safetensors").exists()
    assert "training diverged" in (out / "seed1" / "log.txt").read_text()


# 6. A config file is type-checked -------------------------------------------------------------------------

def test_the_legacy_cache_field_is_type_checked_and_cannot_contradict_its_successor():
    with pytest.raises(ClipFitError, match=r"field 'cache_images' must be true or false, got \"yes\""):
        RunConfig.from_dict({"cache_images": "yes"})
    message = r"fields 'cache_images' \(written by an earlier version\) and 'image_cache' are both given"
    with pytest.raises(ClipFitError, match=message):
        RunConfig.from_dict({"cache_images": True, "image_cache": "none"})


def test_warnings_are_one_line_each(tmp_path, capsys):
    csv_file = tmp_path / "labels.csv"
    for name in ("a.png", "b.png", "c.png", "d.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    csv_file.write_text("path,label,split\na.png,forest,train\nb.png,FOREST,train\nc.png,forest,test\nd.png,FOREST,test\n")
    main(["data", "check", "--dataset", "csv", "--data-root", str(csv_file)])
    err = capsys.readouterr().err
    assert err.startswith("clipfit: warning: ") and "FOREST" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("field, value, message", [
    ("shots", "16", "field 'shots' must be an integer, got \"16\""),
    ("hflip", "no", "field 'hflip' must be true or false, got \"no\""),
    ("seeds", 1, "field 'seeds' must be a list of int, got 1"),
    ("crop_scale", [0.5], "field 'crop_scale' must be a list of 2 numbers, got [0.5]"),
    ("optim", {"lr": "0.1"}, "optim: field 'lr' must be a number, got \"0.1\""),
])
def test_a_config_file_with_a_wrong_type_is_refused_naming_the_field(tmp_path, capsys, field, value, message):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({field: value}))
    with pytest.raises(SystemExit):
        main(["train", "--config", str(config)])
    assert capsys.readouterr().err.strip() == f"clipfit: error: {config}: {message}"


# 7. Prompts longer than the text tower's context ------------------------------------------------------

def test_a_prompt_longer_than_the_context_is_refused_naming_the_class(eurosat_root, tmp_path, capsys):
    long_name = " ".join(["very"] * 80) + " long class"
    with pytest.raises(SystemExit):
        template = "a centered satellite photo of {} " + long_name + "."
        main(train_args(eurosat_root, tmp_path / "run", "--template", template))
    err = capsys.readouterr().err
    assert "class 'annual crop': prompt 'a centered satellite photo of annual crop very very" in err
    # 7 words of the template and class, 80 "very", "long class ." and the start and end tokens: 92.
    assert "is 92 tokens, longer than the text tower's context of 77" in err


# 10. Errors inside data-loading workers and full disks ---------------------------------------------------

def test_an_unreadable_image_in_a_worker_process_is_one_line(eurosat_root, tmp_path, capsys):
    split = json.loads((eurosat_root / "eurosat" / "split_zhou_EuroSAT.json").read_text())
    image = eurosat_root / "eurosat" / "2750" / split["train"][0][0]
    image.write_bytes(b"garbage")
    with pytest.raises(SystemExit):
        main(train_args(eurosat_root, tmp_path / "run", "--shots", "0", "--num-workers", "1", "--no-decode"))
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"clipfit: error: image {image} cannot be read") and "\n" not in err


def test_a_full_disk_is_one_line_naming_the_file(eurosat_root, tmp_path, capsys, monkeypatch):
    import clipfit.files as files

    def full(path, write):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(files, "atomic_write", full)
    with pytest.raises(SystemExit):
        main(train_args(eurosat_root, tmp_path / "run", "--seeds", "1", "--epochs", "1"))
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "[Errno 28] No space left on device" in err
    assert "split_fewshot/shot_2-seed_1.json" in err and "--cache-dir" in err  # the first file written, and a way out


def test_out_pointing_at_a_file_is_refused(eurosat_root, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit):
        main(train_args(eurosat_root, tmp_path / "file"))
    assert capsys.readouterr().err.strip() == f"clipfit: error: --out {tmp_path / 'file'} is a file, not a folder"


# 12, 13. Read-only datasets and $CLIPFIT_DATA ---------------------------------------------------------

def test_draws_of_a_read_only_dataset_go_to_the_users_cache_and_are_shared(eurosat_root, tmp_path, monkeypatch):
    import clipfit.runner as runner

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    dataset = eurosat_root / "eurosat"
    real_access = os.access
    monkeypatch.setattr(runner.os, "access",
                        lambda p, mode: False if Path(p).is_relative_to(dataset) else real_access(p, mode))
    main(train_args(eurosat_root, tmp_path / "a", "--seeds", "1", "--epochs", "1"))
    main(train_args(eurosat_root, tmp_path / "b", "--seeds", "1", "--epochs", "1", "--method", "zeroshot"))
    cached = list((tmp_path / "home" / ".cache" / "clipfit" / "fewshot").rglob("shot_2-seed_1.json"))
    assert len(cached) == 1 and not (dataset / "split_fewshot").exists()


def test_cache_dir_puts_the_draws_where_asked(eurosat_root, tmp_path):
    main(train_args(eurosat_root, tmp_path / "run", "--seeds", "1", "--epochs", "1",
                    "--cache-dir", str(tmp_path / "draws")))
    assert (tmp_path / "draws" / "shot_2-seed_1.json").is_file()


def test_train_reads_its_data_from_clipfit_data_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPFIT_DATA", str(tmp_path / "datasets"))
    monkeypatch.chdir(tmp_path)
    assert resolve(RunConfig(dataset="eurosat")).data_root == str(tmp_path / "datasets")
    monkeypatch.delenv("CLIPFIT_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve(RunConfig(dataset="eurosat")).data_root == str(tmp_path / "home" / ".cache" / "clipfit" / "data")


def test_imagefolder_without_a_data_root_is_refused():
    with pytest.raises(ClipFitError, match="--data-root is required with --dataset imagefolder"):
        resolve(RunConfig(dataset="imagefolder"))


# Random configs: a valid run config or one clear error, never a traceback ------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)
FIELDS = ["method", "method_options", "model", "pretrained", "dataset", "data_root", "protocol", "shots", "seeds",
          "template", "templates", "optim", "crop_scale", "hflip", "eval_batch_size", "image_cache", "image_cache_mb",
          "precision", "num_workers", "device", "out", "cache_dir", "check_images", "no_such_field"]
OPTIM_FIELDS = ["epochs", "batch_size", "lr", "momentum", "weight_decay", "warmup_epochs", "warmup_lr", "optimizer",
                "schedule", "iterations", "min_lr", "eps"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6),
       st.dictionaries(st.sampled_from(OPTIM_FIELDS), json_values, max_size=4))
def test_any_config_is_a_valid_run_config_or_one_clear_error(fields, optim):
    data = {**fields, "optim": optim} if optim else fields
    if "dataset" not in data:
        data["dataset"] = "eurosat"
    try:
        config = resolve(RunConfig.from_dict(data))
    except ClipFitError as err:
        assert str(err) and "\n" not in str(err)
        assert "None" not in str(err) or "None" in json.dumps(data)  # a missing value is never shown as None
        return
    assert (config.optim.epochs or config.optim.iterations) >= 1
    assert config.optim.lr > 0 and math.isfinite(config.optim.lr)
    assert config.shots >= 0 and len(set(config.seeds)) == len(config.seeds) >= 1
    assert config.template.count("{}") >= 1 and isinstance(config.hflip, bool)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["--epochs", "--shots", "--lr", "--batch-size", "--seeds", "--image-cache-mb",
                                 "--beta"]),
                min_size=1, max_size=3),
       st.lists(st.one_of(st.integers(-5, 2**40).map(str), st.sampled_from(["nan", "inf", "-0", "1e999", "x", ""])),
                min_size=3, max_size=3))
def test_any_command_line_values_are_a_run_or_one_clear_error(flags, values):
    from unittest import mock

    from clipfit import api as clipfit_api
    from clipfit import report

    args = ["train", "--dataset", "eurosat", "--data-root", "/nonexistent"]
    for flag, value in zip(flags, values):
        args += [flag, value]
    resolved = []

    def validate_only(config, **kwargs):  # what `clipfit train` would run, once it has been validated
        resolved.append(resolve(config))
        return {"out": resolved[-1].out}

    with (mock.patch.object(clipfit_api, "run", validate_only),
          mock.patch.object(report, "print_summary", lambda summary: None)):
        try:
            main(args)
        except SystemExit as exit_info:
            assert exit_info.code == 2  # argparse's usage error or our one line
            return
    (config,) = resolved
    assert config.optim.epochs >= 1 and config.optim.batch_size >= 1 and math.isfinite(config.optim.lr)
    assert config.method_options["beta"] >= 0 and math.isfinite(config.method_options["beta"])


# 9. What a run will read is checked before it trains ---------------------------------------------------

def test_an_unreadable_test_image_stops_the_run_before_training(eurosat_root, tmp_path, capsys):
    split = json.loads((eurosat_root / "eurosat" / "split_zhou_EuroSAT.json").read_text())
    broken = [eurosat_root / "eurosat" / "2750" / row[0] for row in split["test"][:2]]
    for path in broken:
        path.write_bytes(b"")
    with pytest.raises(SystemExit):
        main(train_args(eurosat_root, tmp_path / "run", "--seeds", "1", "--epochs", "1"))
    err = capsys.readouterr().err
    assert err.startswith("clipfit: error: 2 of the 24 images this run reads cannot be read:")  # 2x4 train, 4x4 test
    assert all(str(path) in err for path in broken)
    assert not (tmp_path / "run").exists()


def test_an_empty_test_split_stops_the_run_before_training(eurosat_root, tmp_path, capsys):
    split_file = eurosat_root / "eurosat" / "split_zhou_EuroSAT.json"
    split = json.loads(split_file.read_text())
    # New classes (labels 2, 3) leave the test split.
    split_file.write_text(json.dumps({**split, "test": [row for row in split["test"] if row[1] < 2]}))
    with pytest.raises(SystemExit):
        main(train_args(eurosat_root, tmp_path / "run", "--protocol", "base2new", "--seeds", "1", "--epochs", "1"))
    err = capsys.readouterr().err.strip()
    assert err == (f"clipfit: error: dataset 'eurosat' at {eurosat_root}: the test split of 'new' is empty; "
                   f"`clipfit data check --dataset eurosat --data-root {eurosat_root}` says what is there")
    assert not (tmp_path / "run").exists()


# The command line as a new user meets it: help lines, defaults, one-line errors, commands that exist ----

def test_zero_shot_on_a_test_only_dataset_needs_no_draw_and_notes_what_it_ignores(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CLIPFIT_DATA", str(tmp_path / "data"))
    main(["train", "--method", "zeroshot", "--model", "mini-clip", "--pretrained", "builtin", "--dataset",
          "mini_shapes_sketch", "--epochs", "5", "--beta", "2", "--seeds", "1", "--no-progress",
          "--out", str(tmp_path / "run")])
    captured = capsys.readouterr()
    assert "clipfit: note: zeroshot does not train; ignoring --epochs, --beta" in captured.err
    assert json.loads((tmp_path / "run" / "seed1" / "metrics.json").read_text())["accuracy_n"] == 300
    assert not list((tmp_path / "data").rglob("shot_*.json"))  # nothing drawn


def test_the_cli_imports_no_torch_until_a_command_needs_it():
    code = ("import sys, clipfit.cli; from clipfit.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'open_clip', 'torchvision') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_train_without_a_dataset_says_it_is_required(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["train"])
    assert capsys.readouterr().err.strip() == (
        "clipfit: error: --dataset is required (a name from `clipfit data list`, 'imagefolder' or 'csv'), "
        "or a --config that names one"
    )
    assert list(tmp_path.iterdir()) == []


def all_parsers(parser, path=()):
    import argparse

    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from all_parsers(sub, (*path, name))


def test_every_option_of_every_command_has_a_help_line():
    from clipfit.cli import build_parser

    missing = [
        f"{' '.join(path)} {action.option_strings or action.dest}"
        for path, parser in all_parsers(build_parser())
        for action in parser._actions
        if not action.help
    ]
    assert missing == []


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["predict"], ["demo"], ["table", "mini-world"],
                                     ["params"], ["models"], ["methods"], ["data", "check"], ["data", "list"]])
def test_every_help_shows_defaults_and_cites_no_file_users_lack(command, capsys):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "NOTES.md" not in text and "(default: None)" not in text
    if command == ["train"]:
        assert "(default: clipfit)" in text and "(default: 16)" in text and "(default: 1 2 3)" in text
    if command == ["predict"]:
        assert "(default: 5)" in text


def test_version_methods_and_models_list_what_exists(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"clipfit {__import__('clipfit').__version__}"
    main(["methods"])
    listed = capsys.readouterr().out
    assert listed.splitlines()[0].startswith("clipfit") and "zeroshot" in listed
    main(["models", "--model", "mini-clip"])
    assert capsys.readouterr().out.split() == ["mini-clip", "builtin", "[on", "disk]"]


def test_the_demo_refuses_a_test_only_task_and_keeps_each_task_in_its_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CLIPFIT_DATA", str(tmp_path / "data"))
    with pytest.raises(SystemExit):
        main(["demo", "--task", "mini_shapes_sketch", "--out", str(tmp_path / "demo")])
    err = capsys.readouterr().err
    assert "demo task 'mini_shapes_sketch' is a test-only domain of mini_shapes (no training images)" in err
    main(["demo", "--task", "mini_colors", "--epochs", "1", "--no-progress", "--out", str(tmp_path / "demo")])
    out = capsys.readouterr().out
    assert (tmp_path / "demo" / "mini-clip-b" / "mini_colors" / "clipfit" / "seed1" / "metrics.json").is_file()
    assert f"runs: {tmp_path / 'demo' / 'mini-clip-b' / 'mini_colors' / 'zeroshot'}" in out.replace("\n", "")
    assert str(tmp_path / "data" / "mini_colors") in out.replace("\n", "")
    assert "base-to-new on mini_colors | mini-clip-b (builtin) | 16 shots | seed 1\n" in out  # a heading, not wrapped


def test_every_command_shares_one_data_root(eurosat_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CLIPFIT_DATA", str(eurosat_root))
    main(["data", "check", "--dataset", "eurosat"])
    assert f"dataset 'eurosat' under {eurosat_root}: OK" in capsys.readouterr().out
    main(train_args(eurosat_root, tmp_path / "run", "--seeds", "1", "--epochs", "1"))
    capsys.readouterr()
    main(["eval", "--run", str(tmp_path / "run" / "seed1"), "--dataset", "eurosat", "--no-progress"])
    assert "accuracy_n: 16" in capsys.readouterr().out  # all 4 classes' test images, found under $CLIPFIT_DATA


def test_class_names_print_in_a_terminal_that_cannot_show_them(tmp_path):
    for name in ("a.png", "b.png", "c.png", "d.png"):
        Image.new("RGB", (32, 32)).save(tmp_path / name)
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("path,label,split\na.png,año,train\nb.png,café,train\nc.png,año,test\nd.png,café,test\n",
                        encoding="utf-8")
    api.run(RunConfig(model=TINY_MODEL, pretrained="none", dataset="csv", data_root=str(csv_file), shots=1, seeds=[1],
                      optim=OptimConfig(epochs=1), out=str(tmp_path / "run")), progress=False, echo=False)
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}
    done = subprocess.run([*CLI, "predict", "--run", str(tmp_path / "run" / "seed1"), str(tmp_path / "c.png")],
                          capture_output=True, env=env)
    assert done.returncode == 0, done.stderr
    assert b"a\\xf1o" in done.stdout and b"caf\\xe9" in done.stdout  # escaped, not a UnicodeEncodeError


# What a second new-user probe found -------------------------------------------------------------------------

@pytest.mark.parametrize("device", ["mps", "meta", "xpu"])
def test_devices_the_tool_does_not_run_on_are_one_line(eurosat_root, tmp_path, capsys, device):
    with pytest.raises(SystemExit):
        main(train_args(eurosat_root, tmp_path / "run", "--device", device))
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"clipfit: error: device '{device}' is not supported: use cpu or cuda") and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_a_relative_data_root_is_written_absolute(eurosat_root, tmp_path, monkeypatch):
    monkeypatch.chdir(eurosat_root.parent)
    main(train_args(eurosat_root.name, tmp_path / "run", "--seeds", "1", "--epochs", "1"))
    assert json.loads((tmp_path / "run" / "seed1" / "config.json").read_text())["data_root"] == str(eurosat_root)
    monkeypatch.chdir(tmp_path)
    api.evaluate_run(tmp_path / "run" / "seed1", progress=False)  # from another folder, the data is found


def test_eval_on_an_image_folder_needs_its_folder(eurosat_root, tmp_path, capsys):
    main(train_args(eurosat_root, tmp_path / "run", "--seeds", "1", "--epochs", "1"))
    with pytest.raises(SystemExit):
        main(["eval", "--run", str(tmp_path / "run" / "seed1"), "--dataset", "imagefolder"])
    assert "--data-root is required with --dataset imagefolder" in capsys.readouterr().err


def test_models_names_close_matches_for_an_unknown_architecture(capsys):
    with pytest.raises(SystemExit):
        main(["models", "--model", "ViT-B-61"])
    assert re.search(r"unknown model 'ViT-B-61' \(close matches: [^)]*ViT-B-16", capsys.readouterr().err)


def test_zero_shot_runs_of_any_shots_are_one_setting(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLIPFIT_DATA", str(tmp_path / "data"))
    base = ["train", "--method", "zeroshot", "--model", "mini-clip", "--pretrained", "builtin", "--dataset",
            "mini_shapes_sketch", "--seeds", "1", "--no-progress"]
    outs = [resolve(RunConfig(method="zeroshot", dataset="mini_shapes_sketch", shots=k)).out for k in (2, 16)]
    assert outs[0] == outs[1]
    main([*base, "--out", str(tmp_path / "run")])
    capsys.readouterr()
    main([*base, "--shots", "2", "--out", str(tmp_path / "run")])
    assert "already done, reusing its metrics" in capsys.readouterr().out


def test_data_check_points_at_the_right_root_and_at_paths_of_the_wrong_kind(tmp_path, capsys, monkeypatch):
    from clipfit_world.tasks import generate_task

    folder = generate_task("mini_colors", tmp_path / "data")
    with pytest.raises(SystemExit):
        main(["data", "check", "--dataset", "mini_colors", "--data-root", str(folder)])
    out = capsys.readouterr().out
    assert f"is the dataset's own folder: pass the folder that holds it, --data-root {folder.parent}" in out
    (tmp_path / "photos").mkdir()
    with pytest.raises(SystemExit):
        main(["data", "check", "--dataset", "csv", "--data-root", str(tmp_path / "photos")])
    assert f"WRONG    {tmp_path / 'photos'} is a folder, not a file" in capsys.readouterr().out


def test_training_on_a_test_only_dataset_says_what_to_do(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CLIPFIT_DATA", str(tmp_path / "data"))
    with pytest.raises(SystemExit):
        main(["train", "--model", "mini-clip", "--pretrained", "builtin", "--dataset", "mini_shapes_sketch",
              "--seeds", "1"])
    err = capsys.readouterr().err
    assert "dataset 'mini_shapes_sketch' is test-only (no training images): train on another dataset" in err


@pytest.mark.parametrize("args", [[], ["data"], ["eval"], ["train", "--lr", "abc"]])
def test_usage_errors_are_one_line_too(capsys, args):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("clipfit: error: ") and "\n" not in err
    assert "data_command" not in err and "required: command" not in err


def test_a_misspelled_model_is_refused_before_any_data_is_generated(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CLIPFIT_DATA", str(tmp_path / "data"))
    with pytest.raises(SystemExit):
        main(["train", "--model", "mini_clip", "--pretrained", "builtin", "--dataset", "mini_letters"])
    assert "unknown model 'mini_clip' (close matches: mini-clip" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_an_unknown_dataset_names_close_matches(capsys):
    with pytest.raises(SystemExit):
        main(["data", "check", "--dataset", "eurosats"])
    assert "unknown dataset 'eurosats' (did you mean eurosat, vtab-eurosat?)" in capsys.readouterr().err
