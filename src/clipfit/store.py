"""The run store: what a run folder holds, when a seed in it is finished, and the summary over its seeds.

A run folder (`--out`) holds one setting (every config field but those in NOT_IDENTITY: the output path,
the seeds, and what moves no number, such as the data-loading processes), claimed by its `summary.json`.
A seed folder `seedN` holds `config.json`, `log.txt`, `adapter.safetensors` and, written last,
`metrics.json`, which names the SHA-256 of the config and adapter beside it: a seed is finished only when
those match. `existing_result` decides whether a rerun reuses a seed, redoes it (saying why) or refuses
the folder; `update_summary` merges finished seeds into `summary.json`. The runner (`clipfit.runner`)
trains and evaluates; this module only reads and writes the folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from .config import DASSL, OptimConfig, RunConfig
from .errors import ClipFitError
from .files import Lock, atomic_write_text, file_sha256
from .methods import method_regime
from .protocols import get_protocol

# What a finished run's numbers mean beyond its config: bumped whenever the training recipe changes, so
# that a run from before is redone, not reused as if it were the same setting.
RECIPES = {
    1: "before 2026-11-30",
    2: "Dassl's warm-up + cosine schedule, whole batches, Dassl's few-shot draw, crops from full-resolution "
    "images, frozen backbone in eval mode, CLIPFit's distillation toward the pretrained weights",
}


RECIPE_VERSION = 2


# Config fields that are not part of a run's identity: where it is written and where draws are cached,
# how many processes load data, how much memory caches images, how the data is checked and on which
# device it runs move nothing in what it trains (a device may move the last float digits); the seeds are
# one folder each. A run interrupted on one machine resumes on another.
NOT_IDENTITY = (
    "out",
    "seeds",
    "cache_dir",
    "num_workers",
    "image_cache_mb",
    "check_images",
    "eval_batch_size",
    "device",
)


# What only a method that trains reads: for one that does not (zero-shot) these are not its identity.
TRAINING_ONLY = ("shots", "optim", "crop_scale", "hflip", "augment", "image_cache")


# Config fields added after runs were recorded without them, with the values that mean what those runs did:
# left out of the identity while at one of them, so that the earlier runs keep their folder names and are
# still reused (a run recorded before `augment` existed augmented its training images: None or True).
ADDED_LATER = {"targets": (None,), "templates": (None,), "augment": (None, True)}


def setting(config: RunConfig) -> dict:
    """The fields that make a run what it is (its identity), as JSON values."""
    ignored = NOT_IDENTITY + (() if method_regime(config.method, config.method_options).trains else TRAINING_ONLY)
    return {
        k: v
        for k, v in json.loads(config.to_json()).items()
        if k not in ignored and not (k in ADDED_LATER and v in ADDED_LATER[k])
    }


def upgraded_setting(old: dict) -> dict:
    """A setting recorded before an optimiser field existed (absent from its JSON, or None once read into
    a config) with that field's value then: Dassl's (every run before trained with SGD and the per-epoch
    cosine), so that its finished runs are still reused. A resolved setting holds no None there."""
    optim = old.get("optim")
    if not isinstance(optim, dict):
        return old
    filled = {f.name: optim.get(f.name) for f in dataclasses.fields(OptimConfig)}
    filled.update({k: v for k, v in DASSL.items() if filled[k] is None})
    return {**old, "optim": {**optim, **filled}}


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data`` in hex."""
    return hashlib.sha256(data).hexdigest()


def default_out(config: RunConfig) -> str:
    """`runs/<dataset>-<protocol>-<shots>shot-<method>-<model>-<8 hex of the setting>` (no shots for a
    method that does not train): readable, and two settings that differ anywhere (lr, epochs, pretrained
    weights, options) never share a folder."""
    digest = sha256_hex(json.dumps(setting(config), sort_keys=True).encode())[:8]
    trains = method_regime(config.method, config.method_options).trains
    shots = f"{config.shots}shot-" if trains else ""  # zero-shot draws nothing
    return f"runs/{config.dataset}-{config.protocol}-{shots}{config.method}-{config.model}-{digest}"


class RunLog:
    """Lines to the run's log file, and to the console when asked."""

    def __init__(self, path: Path, echo: bool):
        self.path, self.echo = path, echo
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, line: str) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
        if self.echo:
            print(line)


def seed_dir(config: RunConfig, seed: int) -> Path:
    return Path(config.out) / f"seed{seed}"


def seed_config(config: RunConfig, seed: int) -> RunConfig:
    """The config a seed folder records: the run's, with that one seed."""
    return dataclasses.replace(config, seeds=[seed])


def read_json_object(path: Path, fix: str) -> dict:
    """The JSON object in a run folder's file; `ClipFitError` naming the file and ``fix`` otherwise."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ClipFitError(f"{path}: damaged, not valid JSON ({err}); {fix}") from None
    if not isinstance(value, dict):
        raise ClipFitError(f"{path}: damaged, holds a JSON {type(value).__name__} instead of an object; {fix}")
    return value


def differing_fields(previous: dict, current: dict, prefix: str = "") -> list[str]:
    """The fields whose values differ, nested ones named in full (`optim.epochs`)."""
    names = []
    for key in sorted(set(previous) | set(current)):
        old, new = previous.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict) and key != "method_options":
            names += differing_fields(old, new, f"{prefix}{key}.")
        elif old != new:
            names.append(f"{prefix}{key}")
    return names


def file_sha256_or_none(path: Path) -> str | None:
    """The SHA-256 of the file's bytes; None when there is no such file."""
    try:
        return file_sha256(path)
    except FileNotFoundError:
        return None


def existing_result(folder: Path, config: RunConfig, weights: str, say: Callable[[str], None]) -> dict | None:
    """The metrics of a finished seed of the same setting, recipe and base weights; None when the seed
    must be (re)done, with `say` telling why; `ClipFitError` if the folder holds another setting."""
    metrics_file, config_file = folder / "metrics.json", folder / "config.json"
    if not metrics_file.exists():
        if config_file.exists():
            say(f"{folder}: unfinished (no metrics.json; interrupted?), redoing this seed")
        return None
    if not config_file.exists():
        raise ClipFitError(f"{folder}: has metrics.json but no config.json; move it away or use --overwrite")
    fix = "move it away or use --overwrite"
    metrics = read_json_object(metrics_file, fix)
    previous = RunConfig.from_dict(read_json_object(config_file, fix), str(config_file))
    seed = config.seeds[0]
    if previous.seeds != [seed] or metrics.get("seed") != seed:
        raise ClipFitError(
            f"{folder}: holds the run of seed {metrics.get('seed', previous.seeds)}, not of seed {seed} "
            f"(copied from another seed folder?); {fix}"
        )
    recipe = metrics.get("recipe", 1)
    # How images were cached belongs to the recipe of an older run, not to the setting the user chose.
    old = {"image_cache": config.image_cache} if recipe != RECIPE_VERSION else {}
    diff = differing_fields({**upgraded_setting(setting(previous)), **old}, setting(config))
    if diff:
        raise ClipFitError(
            f"{folder}: holds a finished run with a different config (differs in: {', '.join(diff)}); "
            f"use another --out or --overwrite"
        )
    if recipe != RECIPE_VERSION:
        say(
            f"{folder}: finished under training recipe {recipe}, not the current {RECIPE_VERSION} "
            f"({RECIPES[RECIPE_VERSION]}); redoing this seed"
        )
        return None
    if metrics.get("weights") != weights:
        raise ClipFitError(
            f"{folder}: holds a finished run on other base weights ({metrics.get('weights', 'not recorded')}; "
            f"{config.model} {config.pretrained} is now {weights}); use another --out or --overwrite"
        )
    problem = completion_problem(folder, metrics)
    if problem:
        say(f"{folder}: {problem}; redoing this seed")
        return None
    return metrics


def completion_problem(folder: Path, metrics: dict) -> str | None:
    """Why the files of a seed folder are not the ones its metrics.json was measured on; None if they are."""
    adapter = file_sha256_or_none(folder / "adapter.safetensors")
    if adapter is None:
        return "adapter.safetensors is missing"
    if "adapter_sha256" not in metrics:
        return "metrics.json records no checksums of its adapter and config (written by an older version)"
    if adapter != metrics["adapter_sha256"]:
        return "adapter.safetensors is not the adapter metrics.json measured"
    if file_sha256_or_none(folder / "config.json") != metrics.get("config_sha256"):
        return "config.json is not the config metrics.json measured"
    return None


def summarize(config: RunConfig, per_seed: list[dict]) -> dict:
    """Mean and std over seeds. A derived column (base-to-new's HM) is computed from the mean accuracies,
    as the papers report it (CoCoOp, CLIPFit Table 1: HM of the mean Base and the mean New), not
    averaged; its std is over the per-seed values, which `per_seed` keeps."""
    protocol = get_protocol(config.protocol)
    per_seed = sorted(per_seed, key=lambda m: m["seed"])
    summary = {
        "out": config.out,
        "method": config.method,
        "model": config.model,
        "pretrained": config.pretrained,
        "dataset": config.dataset,
        "protocol": config.protocol,
        "shots": config.shots,
        "seeds": [m["seed"] for m in per_seed],
        "per_seed": per_seed,
        "mean": {},
        "std": {},
        "setting": setting(config),
    }
    if config.targets is not None:  # a transfer protocol: the trained dataset and those it was tested on
        summary.update(source=config.dataset, targets=list(config.targets))
    if not per_seed:
        return summary
    if "test_sets" in per_seed[0]:
        summary["test_sets"] = per_seed[0]["test_sets"]
    keys = [
        k
        for k in per_seed[0]
        if isinstance(per_seed[0][k], float) and not k.endswith("_n") and k not in ("final_train_loss", "seconds")
    ]
    for key in keys:
        values = [m[key] for m in per_seed]
        summary["mean"][key] = statistics.fmean(values)
        summary["std"][key] = statistics.stdev(values) if len(values) > 1 else 0.0
    derived = protocol.derived(summary["mean"])
    summary["mean"].update(derived)
    if derived:
        summary["derived_from_means"] = sorted(derived)
    return summary


def update_summary(config: RunConfig, finished: list[dict], overwrite: bool = False, drop: int | None = None) -> None:
    """Merge `finished` seeds into `<out>/summary.json` (created, empty, to claim the folder for this
    setting), less seed ``drop`` (about to be redone); another setting's summary there is refused, naming
    the fields that differ, unless ``overwrite`` (which starts the summary afresh)."""
    out = Path(config.out)
    with Lock(out / ".summary.lock", f"summary of {out}", wait=True):
        path = out / "summary.json"
        previous = read_json_object(path, "move it away or use --overwrite") if path.exists() else {}
        if overwrite and previous.get("setting") != setting(config):
            previous = {}
        if previous and "setting" not in previous and not finished:
            return  # written before summaries named their setting: its seed folders are checked one by one
        if "setting" in previous:
            previous["setting"] = upgraded_setting(previous["setting"])
        if "setting" in previous and previous["setting"] != setting(config):
            diff = differing_fields(previous["setting"], setting(config))
            raise ClipFitError(
                f"{out}: holds runs of a different config (differs in: {', '.join(diff)}); "
                f"use another --out or --overwrite"
            )
        merged = {m["seed"]: m for m in previous.get("per_seed", []) if "setting" in previous}
        merged.update({m["seed"]: m for m in finished})
        merged.pop(drop, None)
        atomic_write_text(path, json.dumps(summarize(config, list(merged.values())), indent=2))
