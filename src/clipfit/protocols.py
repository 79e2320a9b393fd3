"""Evaluation protocols and the runner that trains and evaluates one method over several seeds.

A protocol says which classes a run trains on and which test sets it reports; the runner does the
rest: data, backbone, method, engine, and a run folder per seed (config, log, metrics, adapter).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import data
from .adapter import AdapterInfo, load_adapter, save_adapter
from .files import atomic_write_text
from .backbone import Backbone, load_backbone, weights_fingerprint
from .config import IMAGE_CACHES, RunConfig
from .engine import evaluate, train
from .errors import ClipFitError
from .methods import Method, build_method, get_method, method_config


# What a finished run's numbers mean beyond its config: bumped whenever the training recipe changes, so
# that a run from before is redone, not reused as if it were the same setting.
RECIPES = {
    1: "before 2026-11-30",
    2: "Dassl's warm-up + cosine schedule, whole batches, Dassl's few-shot draw, crops from full-resolution "
       "images, frozen backbone in eval mode, distillation toward the pretrained weights",
}
RECIPE_VERSION = 2


@dataclass(frozen=True)
class Protocol:
    name: str
    # The training classes of the few-shot splits.
    train_classes: Callable[[data.DatasetSplits], data.DatasetSplits]
    # Named test sets, each a set of classes evaluated on its test split.
    eval_sets: Callable[[data.DatasetSplits], dict[str, data.DatasetSplits]]
    # Derived columns, computed from the evaluated accuracies.
    derived: Callable[[dict[str, float]], dict[str, float]] = lambda metrics: {}


def harmonic_mean(base: float, new: float) -> float:
    return 0.0 if base + new == 0 else 2 * base * new / (base + new)


PROTOCOLS: dict[str, Protocol] = {}


def register_protocol(protocol: Protocol) -> Protocol:
    PROTOCOLS[protocol.name] = protocol
    return protocol


register_protocol(Protocol(
    name="few-shot",
    train_classes=lambda splits: splits,
    eval_sets=lambda splits: {"accuracy": splits},
))
register_protocol(Protocol(
    name="base2new",
    train_classes=lambda splits: data.subsample_classes(splits, "base"),
    eval_sets=lambda splits: {"base": data.subsample_classes(splits, "base"), "new": data.subsample_classes(splits, "new")},
    derived=lambda m: {"hm": harmonic_mean(m["base"], m["new"])},
))


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ClipFitError(f"unknown protocol {name!r} (available: {', '.join(PROTOCOLS)})")
    return PROTOCOLS[name]


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve(config: RunConfig) -> RunConfig:
    """Fill every default that depends on the dataset, protocol or method, so the written config is complete."""
    get_protocol(config.protocol)
    method_cls = get_method(config.method)
    spec = data.get_spec(config.dataset)
    template = config.template or spec.template
    if "{}" not in template:
        raise ClipFitError(f"prompt template {template!r} has no '{{}}' for the class name")
    options = {**method_cls.protocol_defaults(config.protocol, config.dataset), **config.method_options}
    method_config(config.method, options)
    optim_defaults = method_cls.optim_defaults(config.protocol, config.dataset)
    optim = dataclasses.replace(config.optim, **{k: v for k, v in optim_defaults.items() if getattr(config.optim, k) is None})
    out = config.out or f"runs/{config.dataset}-{config.protocol}-{config.shots}shot-{config.method}"
    return dataclasses.replace(
        config, template=template, optim=optim, method_options=options, seeds=list(config.seeds), out=out,
        hflip=training_flips(config),
    )


def training_flips(config: RunConfig) -> bool:
    """Whether training flips images: as the config says, else unless the dataset is not mirror-invariant."""
    return data.get_spec(config.dataset).mirror_invariant if config.hflip is None else config.hflip


class RunLog:
    """Lines to the run's log file, and to the console when asked."""

    def __init__(self, path: Path, echo: bool):
        self.path, self.echo = path, echo
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, line: str) -> None:
        with self.path.open("a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
        if self.echo:
            print(line)


def seed_dir(config: RunConfig, seed: int) -> Path:
    return Path(config.out) / f"seed{seed}"


def _seed_config(config: RunConfig, seed: int) -> RunConfig:
    """The config a seed folder records: the run's, with that one seed."""
    return dataclasses.replace(config, seeds=[seed])


def _existing_result(folder: Path, config: RunConfig, weights: str, say: Callable[[str], None]) -> dict | None:
    """The metrics of a finished run with the same config, recipe and base weights; None if there is none
    or it is the same setting run under an older recipe (`say` tells why it is redone); an error if the
    folder holds a different run."""
    metrics_file, config_file = folder / "metrics.json", folder / "config.json"
    if not metrics_file.exists():
        return None
    if not config_file.exists():
        raise ClipFitError(f"{folder}: has metrics.json but no config.json; move it away or use --overwrite")
    metrics = json.loads(metrics_file.read_text())
    previous = json.loads(config_file.read_text())
    current = json.loads(config.to_json())
    recipe = metrics.get("recipe", 1)
    if recipe != RECIPE_VERSION:
        # Read the old config as today's code reads it (renamed fields translated); how images were cached
        # belongs to the recipe, not to the setting the user chose.
        previous = {**json.loads(RunConfig.from_dict(previous, str(config_file)).to_json()), "image_cache": config.image_cache}
    if previous != current:
        diff = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
        raise ClipFitError(
            f"{folder}: holds a finished run with a different config (differs in: {', '.join(diff)}); "
            f"use another --out or --overwrite"
        )
    if recipe != RECIPE_VERSION:
        say(f"{folder}: finished under training recipe {recipe}, not the current {RECIPE_VERSION} "
            f"({RECIPES[RECIPE_VERSION]}); redoing this seed")
        return None
    if metrics.get("weights") != weights:
        raise ClipFitError(
            f"{folder}: holds a finished run on other base weights ({metrics.get('weights', 'not recorded')}; "
            f"{config.model} {config.pretrained} is now {weights}); use another --out or --overwrite"
        )
    return metrics


def load_splits(config: RunConfig, seed: int) -> data.DatasetSplits:
    splits = data.load_dataset(config.dataset, config.data_root, template=config.template)
    return data.fewshot(splits, config.shots, seed, cache_dir=splits.fewshot_dir)


def image_datasets(backbone: Backbone, config: RunConfig):
    """Functions that turn samples into the train and the test image datasets for this backbone.

    Training images are read once per epoch, so they are cached as `config.image_cache` says; test
    images are read once per evaluation and never cached (ImageNet's 50,000 would not fit)."""
    if config.image_cache not in IMAGE_CACHES:
        raise ClipFitError(f"image_cache must be one of {', '.join(IMAGE_CACHES)}, got {config.image_cache!r}")
    p = backbone.preprocess
    cache = {
        "decoded": {"cache_bytes": config.image_cache_mb * 2**20},
        "resized-approximate": {"cache_bytes": config.image_cache_mb * 2**20, "resize_short_side": p.image_size},
        "none": {},
    }[config.image_cache]
    train_tf = data.train_transform(p.image_size, p.mean, p.std, crop_scale=tuple(config.crop_scale),
                                    hflip=training_flips(config))
    test_tf = data.test_transform(p.image_size, p.mean, p.std)
    return (
        lambda samples: data.ImageDataset(samples, train_tf, **cache),
        lambda samples: data.ImageDataset(samples, test_tf),
    )


def evaluate_sets(method: Method, protocol: Protocol, splits: data.DatasetSplits, test_dataset, config: RunConfig, progress: bool) -> dict[str, float]:
    metrics = {}
    for name, subset in protocol.eval_sets(splits).items():
        method.set_classes(subset.classnames)
        result = evaluate(
            method, test_dataset(subset.test), batch_size=config.eval_batch_size,
            num_workers=config.num_workers, progress=progress, desc=f"eval {name}", precision=config.precision,
        )
        metrics[name] = result["accuracy"]
        metrics[f"{name}_n"] = result["n"]
    metrics.update(protocol.derived(metrics))
    return metrics


def run_seed(config: RunConfig, seed: int, *, progress: bool = True, echo: bool = True, overwrite: bool = False) -> dict:
    """Train and evaluate one seed; a finished run with the same config is read back, not redone."""
    seed_config = _seed_config(config, seed)
    folder = seed_dir(config, seed)
    weights = weights_fingerprint(config.model, config.pretrained)
    say = print if echo else (lambda line: None)
    if not overwrite:
        existing = _existing_result(folder, seed_config, weights, say)
        if existing is not None:
            say(f"{folder}: already done, reusing its metrics")
            return existing
    for stale in ("metrics.json", "log.txt"):
        (folder / stale).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "config.json", seed_config.to_json())
    log = RunLog(folder / "log.txt", echo=False)
    log(f"config {seed_config.to_json()}")
    log(f"recipe {RECIPE_VERSION}: {RECIPES[RECIPE_VERSION]}")
    if config.image_cache == "resized-approximate":
        log("image_cache=resized-approximate is APPROXIMATE: training crops are cut from images resized to the "
            "model's input size, not from the full-resolution files as the reference transform does")
    started = time.time()
    protocol = get_protocol(config.protocol)
    splits = load_splits(config, seed)
    for name, count in data.classes_short_of(splits, config.shots) if config.shots and config.shots > 0 else []:
        log(f"class {name!r} has {count} train image(s), fewer than shots={config.shots}: all are used (as Dassl does)")
    train_splits = protocol.train_classes(splits)
    backbone = load_backbone(config.model, config.pretrained, device=resolve_device(config.device))
    train_dataset, test_dataset = image_datasets(backbone, config)
    method = build_method(config.method, backbone, train_splits.classnames, config.template, config.method_options)
    log(f"trainable parameters {sum(method.parameter_groups().values())} {method.parameter_groups()}")
    history = train(
        method, train_dataset(train_splits.train), config.optim, seed=seed,
        num_workers=config.num_workers, progress=progress, log=log, precision=config.precision,
    )
    info = AdapterInfo(
        model=config.model, pretrained=config.pretrained, method=config.method,
        method_options=config.method_options, classnames=train_splits.classnames, template=config.template,
        weights=weights,
    )
    save_adapter(folder / "adapter.safetensors", method.adapter_state(), info)
    metrics = evaluate_sets(method, protocol, splits, test_dataset, config, progress)
    metrics.update(
        seed=seed, recipe=RECIPE_VERSION, weights=weights, trainable_parameters=sum(method.parameter_groups().values()),
        final_train_loss=history[-1]["loss"] if history else None, seconds=round(time.time() - started, 1),
    )
    log(f"metrics {json.dumps(metrics)}")
    atomic_write_text(folder / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def summarize(config: RunConfig, per_seed: list[dict]) -> dict:
    """Mean and std over seeds. A derived column (base-to-new's HM) is computed from the mean accuracies,
    as the papers report it (CoCoOp, CLIPFit Table 1: HM of the mean Base and the mean New), not
    averaged; its std is over the per-seed values, which `per_seed` keeps."""
    protocol = get_protocol(config.protocol)
    keys = [k for k in per_seed[0] if isinstance(per_seed[0][k], float) and not k.endswith("_n") and k not in ("final_train_loss", "seconds")]
    summary = {"out": config.out, "method": config.method, "model": config.model, "pretrained": config.pretrained, "dataset": config.dataset,
               "protocol": config.protocol, "shots": config.shots, "seeds": [m["seed"] for m in per_seed], "per_seed": per_seed,
               "mean": {}, "std": {}}
    for key in keys:
        values = [m[key] for m in per_seed]
        summary["mean"][key] = statistics.fmean(values)
        summary["std"][key] = statistics.stdev(values) if len(values) > 1 else 0.0
    derived = protocol.derived(summary["mean"])
    summary["mean"].update(derived)
    if derived:
        summary["derived_from_means"] = sorted(derived)
    return summary


def run(config: RunConfig, *, progress: bool = True, echo: bool = True, overwrite: bool = False) -> dict:
    """Run every seed of a config and write `<out>/summary.json`; returns the summary."""
    config = resolve(config)
    per_seed = [run_seed(config, seed, progress=progress, echo=echo, overwrite=overwrite) for seed in config.seeds]
    summary = summarize(config, per_seed)
    atomic_write_text(Path(config.out) / "summary.json", json.dumps(summary, indent=2))
    return summary


def load_run(run_dir: str | Path, device: str = "auto") -> tuple[RunConfig, Method]:
    """Rebuild a tuned model from a run folder: the base weights its config names plus its adapter file."""
    run_dir = Path(run_dir)
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        raise ClipFitError(f"{run_dir}: not a run folder (no config.json); pass a seed folder such as runs/x/seed1")
    config = RunConfig.from_file(config_file)
    tensors, info = load_adapter(run_dir / "adapter.safetensors")
    current = weights_fingerprint(info.model, info.pretrained)
    if info.weights and info.weights != current:
        raise ClipFitError(f"{run_dir / 'adapter.safetensors'}: trained on {info.model} {info.pretrained} "
                           f"with weights {info.weights}, which now are {current}; retrain it on these weights")
    backbone = load_backbone(info.model, info.pretrained, device=resolve_device(device))
    method = build_method(info.method, backbone, info.classnames, info.template, info.method_options)
    method.load_adapter_state(tensors, source=str(run_dir / "adapter.safetensors"))
    method.eval()
    return config, method
