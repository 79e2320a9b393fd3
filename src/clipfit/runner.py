"""The runner: one method trained and evaluated over several seeds, one folder per seed.

    run(config) -> resolve defaults, validate, check the data a run will read -> run_seed per seed
                -> summary.json, merged over every finished seed of the setting

A seed folder is written by one process at a time (a lock on `<out>/.seedN.lock` that the kernel drops
when its holder dies); what a folder holds and when a seed in it is finished is the run store's
(`clipfit.store`): a rerun reuses a finished seed of the same setting and recipe, redoes an unfinished
one or one from an older recipe (saying why), and refuses a folder that holds another setting.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

import torch

from . import data
from .backbone import Backbone, check_backbone_names, load_backbone, skeleton_backbone, weights_fingerprint
from .config import RunConfig, check_device, check_template, complete, typed_fields, validate
from .defaults import CHECK_IMAGES_UP_TO, cache_root, default_data_root
from .engine import evaluate, train
from .errors import ClipFitError, DataError
from .files import Lock, atomic_write_text, remove_orphan_temp_files
from .methods import Method, build_method, get_method, method_config, method_regime
from .methods.registry import inapplicable_reason
from .protocols import TARGETS_MEAN, Protocol, get_protocol
from .store import (
    RECIPE_VERSION,
    RunLog,
    completion_problem,
    default_out,
    existing_result,
    file_sha256_or_none,
    read_json_object,
    seed_config,
    seed_dir,
    sha256_hex,
    summarize,
    update_summary,
)
from .templates import resolve_templates, templates_for


def resolve(config: RunConfig) -> RunConfig:
    """Fill every default that depends on the dataset, protocol or method and validate every value, so
    the written config is complete; `ClipFitError` naming the field at fault otherwise."""
    validate(config)
    protocol = get_protocol(config.protocol)
    method_cls = get_method(config.method)
    spec = data.get_spec(config.dataset)
    # An alias (the PEFT-for-CLIP study's vtba-dtd) is its dataset: one setting, one folder, its recipe.
    config = dataclasses.replace(config, dataset=spec.name)
    # Before any data is read or generated; a Hugging Face folder's config.json names its architecture.
    check_backbone_names(config.model, config.pretrained)
    if protocol.datasets is not None and not protocol.datasets(config.dataset):
        raise ClipFitError(
            f"protocol {config.protocol!r} applies to {protocol.datasets_hint}, not to dataset {config.dataset!r}"
        )
    targets = resolve_targets(config, protocol)
    if config.data_root is None and config.dataset in data.GENERIC_FORMATS:
        raise ClipFitError(
            f"--data-root is required with --dataset {config.dataset} "
            f"({'the folder of class sub-folders' if config.dataset == 'imagefolder' else 'the CSV file'})"
        )
    template = config.template or spec.template
    check_template(template)
    options = {
        **method_cls.protocol_defaults(config.protocol, config.dataset, config.shots),
        **method_cls.preset,
        **config.method_options,
    }
    options = typed_fields(method_cls.config_class, options, f"method {config.method!r}: option")
    method_config(config.method, options)
    # Built on a weightless skeleton, a method that cannot apply to these towers says why, as `clipfit params` does.
    reason = inapplicable_reason(config.method, skeleton_backbone(config.model, config.pretrained), options)
    if reason is not None:
        raise ClipFitError(f"method {config.method!r} does not apply to {config.model}: {reason}")
    if protocol.evaluates_unseen and not method_cls.classifies_unseen(options):
        fix = (
            " or --type vision-language"
            if "type" in {f.name for f in dataclasses.fields(method_cls.config_class)}
            else ""
        )
        result = "base-to-new" if config.protocol == "base2new" else f"{config.protocol} (other datasets' classes)"
        raise ClipFitError(
            f"method {config.method!r}{_options_text(config.method_options)} cannot classify classes it did "
            f"not train on (its classifier holds the training classes only), so it has no {result} "
            f"result: use --protocol few-shot{fix}"
        )
    if config.templates is not None:  # a method that refuses an ensemble says why, before anything runs
        method_cls.check_templates_role(options)
    optim = complete(config.optim, method_cls.optim_defaults(config.protocol, config.dataset, config.shots))
    if optim.iterations is not None and optim.schedule == "cosine-epochs":
        raise ClipFitError(
            f"--iterations: method {config.method!r} steps its schedule once per epoch (Dassl's); give --epochs"
        )
    # Paths are written absolute, so that a run folder read from another working folder finds its data.
    resolved = dataclasses.replace(
        config,
        template=template,
        optim=optim,
        method_options=options,
        seeds=list(config.seeds),
        targets=targets,
        templates=resolve_templates(config.templates),  # a file's templates themselves: its edits are new settings
        data_root=os.path.abspath(os.path.expanduser(config.data_root or str(default_data_root()))),
        cache_dir=config.cache_dir and os.path.abspath(os.path.expanduser(config.cache_dir)),
        hflip=training_flips(config),
        augment=get_protocol(config.protocol).augment if config.augment is None else config.augment,
        crop_scale=training_crop_scale(config),
    )
    validate(resolved)
    return dataclasses.replace(resolved, out=config.out or default_out(resolved))


def resolve_targets(config: RunConfig, protocol: Protocol) -> list[str] | None:
    """The datasets a transfer protocol also tests: ``config.targets``, else the protocol's defaults for
    the trained dataset; None for a protocol that tests the trained dataset only. `ClipFitError` naming
    a target that is unknown, the trained dataset itself, a generic format or given twice."""
    if not protocol.transfers:
        if config.targets is not None:
            raise ClipFitError(
                f"--targets applies to the transfer protocols (cross-dataset, distribution-shift), "
                f"not to --protocol {config.protocol}"
            )
        return None
    if config.dataset in data.GENERIC_FORMATS:
        raise ClipFitError(
            f"protocol {config.protocol!r} trains on a registered dataset (ImageNet in the papers), not on "
            f"--dataset {config.dataset}: train it with --protocol few-shot and evaluate the run on each target "
            "with clipfit eval --run <seed folder> --dataset D"
        )
    if config.targets is None:
        targets = protocol.default_targets(config.dataset)
    else:  # an unknown name: DataError naming close matches; an alias: its dataset
        targets = [t if t in data.GENERIC_FORMATS else data.get_spec(t).name for t in config.targets]
    if not targets:
        raise ClipFitError(f"--targets: protocol {config.protocol!r} needs at least one target dataset")
    for target in targets:
        if target in data.GENERIC_FORMATS:
            raise ClipFitError(
                f"--targets {target}: a target is a registered dataset; evaluate a finished run on your own "
                f"folder with clipfit eval --run <seed folder> --dataset {target} --data-root DIR"
            )
        if target == config.dataset:
            raise ClipFitError(f"--targets {target}: the trained dataset is tested anyway; name other datasets")
        if targets.count(target) > 1:
            raise ClipFitError(f"--targets {target}: given more than once")
    return targets


def _options_text(options: dict) -> str:
    return " with " + ", ".join(f"{k}={v}" for k, v in options.items()) if options else ""


def training_crop_scale(config: RunConfig) -> tuple[float, float]:
    """The training crops' area range: as the config says, else the papers' (0.08, 1) or the dataset's own
    lower bound (`DatasetSpec.min_crop_area`)."""
    if config.crop_scale is not None:
        return tuple(config.crop_scale)
    return (data.get_spec(config.dataset).min_crop_area, 1.0)


def training_flips(config: RunConfig) -> bool:
    """Whether training flips images: as the config says, else unless the dataset is not mirror-invariant."""
    return data.get_spec(config.dataset).mirror_invariant if config.hflip is None else config.hflip


def fewshot_cache_dir(config: RunConfig, splits: data.DatasetSplits, seed: int) -> Path | None:
    """Where a seed's few-shot draw is cached: `config.cache_dir`; else beside the dataset
    (`<dataset>/split_fewshot`) when the draw is there already or the folder can be written; else, for a
    read-only dataset, `~/.cache/clipfit/fewshot/<dataset>-<8 hex of its folder>`, the same for every
    method that reads that dataset."""
    if config.cache_dir:
        return Path(config.cache_dir).expanduser()
    beside = splits.fewshot_dir
    if beside is None:
        return None
    nearest = next(p for p in (beside, *beside.parents) if p.exists())
    if data.fewshot_cache_file(beside, config.shots, seed).is_file() or os.access(nearest, os.W_OK):
        return beside
    key = sha256_hex(str(beside.parent).encode())[:8]
    return cache_root() / "fewshot" / f"{splits.name}-{key}"


def load_splits(config: RunConfig, seed: int) -> data.DatasetSplits:
    """The dataset with this seed's few-shot draw; a method that does not train needs no draw (and a
    test-only dataset has nothing to draw from). A method that searches on validation reads the protocol's
    `search_splits` where it has them (VTAB-1k: train800 and val200)."""
    protocol = get_protocol(config.protocol)
    if protocol.search_splits is not None and get_method(config.method).searches_on_validation(config.method_options):
        splits = protocol.search_splits(config.dataset, config.data_root)
        if config.template is not None:
            splits = dataclasses.replace(splits, template=config.template)
    else:
        splits = data.load_dataset(config.dataset, config.data_root, template=config.template)
    if not method_regime(config.method, config.method_options).trains:
        return splits
    return data.fewshot(splits, config.shots, seed, cache_dir=fewshot_cache_dir(config, splits, seed))


def image_datasets(backbone: Backbone, config: RunConfig):
    """Functions that turn samples into the train and the test image datasets for this backbone.

    Training images are read once per epoch, so they are cached as `config.image_cache` says; test
    images are read once per evaluation and never cached (ImageNet's 50,000 would not fit)."""
    p = backbone.preprocess
    cache = {
        "decoded": {"cache_bytes": config.image_cache_mb * 2**20},
        "resized-approximate": {"cache_bytes": config.image_cache_mb * 2**20, "resize_short_side": p.image_size},
        "none": {},
    }[config.image_cache]
    test_tf = data.test_transform(p.image_size, p.mean, p.std)
    train_tf = test_tf
    if config.augment is not False:
        train_tf = data.train_transform(
            p.image_size, p.mean, p.std, crop_scale=training_crop_scale(config), hflip=training_flips(config)
        )
    return (
        lambda samples: data.ImageDataset(samples, train_tf, **cache),
        lambda samples: data.ImageDataset(samples, test_tf),
    )


def evaluate_sets(
    method: Method, protocol: Protocol, splits: data.DatasetSplits, test_dataset, config: RunConfig, progress: bool
) -> dict:
    """The protocol's metrics of the trained dataset's test sets (`evaluate_named`), with its derived ones."""
    metrics = evaluate_named(method, protocol.eval_sets(splits), test_dataset, config, progress)
    metrics.update(protocol.derived(metrics))
    return metrics


def evaluate_named(
    method: Method, sets: dict[str, data.DatasetSplits], test_dataset, config: RunConfig, progress: bool
) -> dict:
    """Accuracy (%) on the test split of each named set, with its own class names and template: metrics
    ``{name: accuracy, f"{name}_n": images}``, and ``test_sets``, what each was: ``{name: {"dataset",
    "classes", "images"}}``, as the run folder records it."""
    metrics: dict = {}
    described = {}
    for name, subset in sets.items():
        method.template = subset.template
        if config.templates is not None:  # `clip`: each dataset's own CLIP set
            method.set_templates(templates_for(config.templates, subset.name))
        method.set_classes(subset.classnames)
        result = evaluate(
            method,
            test_dataset(subset.test),
            batch_size=config.eval_batch_size,
            num_workers=config.num_workers,
            progress=progress,
            desc=f"eval {name}",
            precision=config.precision,
        )
        metrics[name] = result["accuracy"]
        metrics[f"{name}_n"] = result["n"]
        described[name] = {"dataset": subset.name, "classes": subset.num_classes, "images": result["n"]}
    metrics["test_sets"] = described
    return metrics


def evaluate_targets(
    method: Method, targets: dict[str, data.DatasetSplits], test_dataset, config: RunConfig, progress: bool
) -> dict:
    """A transfer protocol's targets, each on its whole test set (`evaluate_named`), and their mean
    accuracy as `TARGETS_MEAN` (the papers' "Average" of the targets, the source left out)."""
    metrics = evaluate_named(method, targets, test_dataset, config, progress)
    metrics[TARGETS_MEAN] = statistics.fmean(metrics[name] for name in targets)
    return metrics


def load_targets(config: RunConfig) -> dict[str, data.DatasetSplits]:
    """Each target of a transfer protocol, all its classes, read from the run's data root ({} for a
    protocol without targets)."""
    return {name: data.load_dataset(name, config.data_root) for name in config.targets or []}


def draw_sha256(samples: list[data.Sample], root: str) -> str:
    """The SHA-256 of an image list in order: each image's path relative to ``root`` (POSIX form) and its
    label, one line each, so that two machines with the dataset in different folders agree."""
    lines = (f"{Path(os.path.relpath(s.path, root)).as_posix()}\t{s.label}\n" for s in samples)
    return sha256_hex("".join(lines).encode("utf-8"))


def split_file_sha256(config: RunConfig) -> str | None:
    """The SHA-256 of the split file the dataset's reader read (`DatasetSpec.split_file`); None for a
    layout without one."""
    spec = data.get_spec(config.dataset)
    if spec.split_file is None:
        return None
    return file_sha256_or_none(spec.data_dir(config.data_root) / spec.split_file)


def check_data(config: RunConfig) -> tuple[dict[int, data.DatasetSplits], dict[str, data.DatasetSplits]]:
    """Each seed's few-shot splits and the protocol's targets, once the data a run will read is known to
    be there: a training set for a method that trains, a test image in every evaluated set, and (for at
    most CHECK_IMAGES_UP_TO images, or always with `config.check_images`) every image decodable.
    `DataError` listing what is missing or unreadable, before any training; `ClipFitError` for a target
    whose classes the method's classifier cannot name."""
    protocol = get_protocol(config.protocol)
    trains = method_regime(config.method, config.method_options).trains
    per_seed = {seed: load_splits(config, seed) for seed in config.seeds}
    targets = load_targets(config)
    needed: dict[Path, data.Sample] = {}
    trained_classes = protocol.train_classes(next(iter(per_seed.values()))).classnames
    foreign = [name for name, t in targets.items() if t.classnames != trained_classes]
    if foreign and not get_method(config.method).classifies_unseen(config.method_options):
        raise ClipFitError(
            f"method {config.method!r}{_options_text(config.method_options)} classifies only the "
            f"{len(trained_classes)} classes it trains on, and {', '.join(foreign)} test other classes "
            f"(or a subset): leave them out of --targets"
        )
    for name, target in targets.items():
        if not target.test:
            raise DataError(
                f"target dataset {name!r} at {config.data_root}: the test split is empty; "
                f"`clipfit data check --dataset {name} --data-root {config.data_root}` says what is there"
            )
        needed.update((s.path, s) for s in target.test)
    for splits in per_seed.values():
        train_splits = protocol.train_classes(splits)
        if trains and not train_splits.train and data.get_spec(config.dataset).test_only:
            raise DataError(
                f"dataset {config.dataset!r} is test-only (no training images): train on another dataset "
                f"and evaluate the run on this one: clipfit eval --run <seed folder> --dataset {config.dataset}"
            )
        if trains and not train_splits.train:
            raise DataError(
                f"dataset {config.dataset!r} at {config.data_root}: the training split is empty; "
                f"`clipfit data check --dataset {config.dataset} --data-root {config.data_root}` says what is there"
            )
        for name, subset in protocol.eval_sets(splits).items():
            if not subset.test:
                raise DataError(
                    f"dataset {config.dataset!r} at {config.data_root}: the test split of {name!r} is empty; "
                    f"`clipfit data check --dataset {config.dataset} --data-root {config.data_root}` says what is there"
                )
            needed.update((s.path, s) for s in subset.test)
        if trains:
            needed.update((s.path, s) for s in train_splits.train)
    if config.check_images or (config.check_images is None and len(needed) <= CHECK_IMAGES_UP_TO):
        bad = data.unreadable_images(list(needed.values()))
        if bad:
            lines = "\n".join(f"  {path}: {reason}" for path, reason in bad[:10])
            more = f"\n  and {len(bad) - 10} more" if len(bad) > 10 else ""
            raise DataError(f"{len(bad)} of the {len(needed)} images this run reads cannot be read:\n{lines}{more}")
    return per_seed, targets


def run_seed(
    config: RunConfig,
    seed: int,
    splits: data.DatasetSplits,
    *,
    progress: bool = True,
    echo: bool = True,
    overwrite: bool = False,
    backbone: Backbone | None = None,
    targets: dict[str, data.DatasetSplits] | None = None,
) -> dict:
    """Train and evaluate one seed on its few-shot `splits` (and a transfer protocol's ``targets``, read
    here when not given); a finished seed of the same setting is read back, not redone. The seed folder is
    locked for the whole time. ``backbone``: the base model freshly loaded for this seed (it is tuned in
    place), else it is loaded here."""
    one_seed = seed_config(config, seed)
    folder = seed_dir(config, seed)
    weights = weights_fingerprint(config.model, config.pretrained)
    say = print if echo else (lambda line: None)
    with Lock(Path(config.out) / f".seed{seed}.lock", f"seed folder {folder}"):
        remove_orphan_temp_files(folder)
        if not overwrite:
            existing = existing_result(folder, one_seed, weights, say)
            if existing is not None:
                say(f"{folder}: already done, reusing its metrics")
                return existing
        protocol = get_protocol(config.protocol)
        train_splits = protocol.train_classes(splits)
        if backbone is None:
            backbone = load_backbone(config.model, config.pretrained, device=check_device(config.device))
        torch.manual_seed(seed)  # a method's random initialisation (CoOp's context) is the seed's
        method = build_method(config.method, backbone, train_splits.classnames, config.template, config.method_options,
                              templates=templates_for(config.templates, config.dataset))
        # The summary and the completion marker go first, so that no crash from here on leaves a seed that
        # looks finished.
        update_summary(config, [], drop=seed)
        for stale in ("metrics.json", "adapter.safetensors", "log.txt"):
            (folder / stale).unlink(missing_ok=True)
        folder.mkdir(parents=True, exist_ok=True)
        config_json = one_seed.to_json()
        atomic_write_text(folder / "config.json", config_json)
        log = RunLog(folder / "log.txt", echo=False)
        log(f"config {config_json}")
        log(
            f"recipe {RECIPE_VERSION} (data, loaders and frozen backbone; "
            "each method's optimiser is in the config above)"
        )
        if config.augment is False and method.regime.trains:
            log("training images are not augmented (augment=false): they get the evaluation transform")
        if config.image_cache == "resized-approximate":
            log(
                "image_cache=resized-approximate is APPROXIMATE: training crops are cut from images resized to the "
                "model's input size, not from the full-resolution files as the reference transform does"
            )
        for name, count in (
            data.classes_short_of(splits, config.shots) if config.shots > 0 and method.regime.trains else []
        ):
            log(
                f"class {name!r} has {count} train image(s), fewer than shots={config.shots}: "
                "all are used (as Dassl does)"
            )
        log(f"trainable parameters {sum(method.parameter_groups().values())} {method.parameter_groups()}")
        started = time.time()
        train_dataset, test_dataset = image_datasets(backbone, config)
        try:
            history = train(
                method,
                train_dataset(train_splits.train),
                config.optim,
                seed=seed,
                plain_dataset=test_dataset(train_splits.train),
                val_dataset=test_dataset(train_splits.val),
                num_workers=config.num_workers,
                progress=progress,
                log=log,
                precision=config.precision,
            )
        except ClipFitError as err:
            log(f"error {err}")
            raise
        if method.regime.fit:  # a fitted head or cache is sized by the training set only now
            log(
                f"trainable parameters after fitting {sum(method.parameter_groups().values())} "
                f"{method.parameter_groups()}"
            )
        method.save_pretrained(
            folder / "adapter.safetensors", precision=config.precision, options=config.method_options
        )
        metrics = evaluate_sets(method, protocol, splits, test_dataset, config, progress)
        if protocol.transfers:
            transfer = evaluate_targets(
                method, load_targets(config) if targets is None else targets, test_dataset, config, progress
            )
            metrics.update({**transfer, "test_sets": {**metrics["test_sets"], **transfer["test_sets"]}})
        metrics.update(
            fewshot_sha256=draw_sha256(train_splits.train, config.data_root) if method.regime.trains else None,
            split_sha256=split_file_sha256(config),
            seed=seed,
            recipe=RECIPE_VERSION,
            weights=weights,
            trainable_parameters=sum(method.parameter_groups().values()),
            final_train_loss=next((r["loss"] for r in reversed(history) if "loss" in r), None),
            seconds=round(time.time() - started, 1),
            config_sha256=sha256_hex(config_json.encode("utf-8")),
            adapter_sha256=file_sha256_or_none(folder / "adapter.safetensors"),
        )
        log(f"metrics {json.dumps(metrics)}")
        atomic_write_text(folder / "metrics.json", json.dumps(metrics, indent=2))
        return metrics


def run(config: RunConfig, *, progress: bool = True, echo: bool = True, overwrite: bool = False) -> dict:
    """Run every seed of a config; returns the summary of its seeds. `<out>/summary.json` holds every
    finished seed of the setting, including seeds other runs added to the folder. Everything that can
    be checked before training (options, data, images, the checkpoint) is, before the folder is touched."""
    config = resolve(config)
    per_seed_splits, targets = check_data(config)
    # Loading the weights checks the checkpoint before the run folder is created; the first seed trains on them.
    backbone = load_backbone(config.model, config.pretrained, device=check_device(config.device))
    update_summary(config, [], overwrite)  # claim the folder for this setting
    per_seed = []
    for seed in config.seeds:
        per_seed.append(
            run_seed(
                config,
                seed,
                per_seed_splits[seed],
                progress=progress,
                echo=echo,
                overwrite=overwrite,
                backbone=backbone,
                targets=targets,
            )
        )
        backbone = None  # training tuned it in place: every later seed starts from the file again
        update_summary(config, per_seed[-1:])
    return summarize(config, per_seed)


def load_run(run_dir: str | Path, device: str = "auto") -> tuple[RunConfig, Method]:
    """Rebuild a tuned model from a finished seed folder: the base weights its config names plus its
    adapter file, once the folder's metrics.json confirms both are the ones it measured."""
    run_dir = Path(run_dir)
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        raise ClipFitError(f"{run_dir}: not a run folder (no config.json); pass a seed folder such as runs/x/seed1")
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        raise ClipFitError(
            f"{run_dir}: the run did not finish (no metrics.json); rerun it: "
            f"clipfit train --config {config_file} --out {run_dir.parent}"
        )
    config = RunConfig.from_file(config_file)
    rerun = f"clipfit train --config {config_file} --out {run_dir.parent}"
    problem = completion_problem(run_dir, read_json_object(metrics_file, f"rerun it: {rerun} --overwrite"))
    if problem:
        raise ClipFitError(f"{run_dir}: {problem}; rerun it: {rerun} --overwrite")
    # A format-1 adapter records no precision: the run's config says it.
    return config, load_adapter(run_dir / "adapter.safetensors", device=device, precision=config.precision)


def load_adapter(
    path: str | Path, *, device: str = "auto", backbone: Backbone | None = None, precision: str | None = None
) -> Method:
    """`Method.from_pretrained`: the tuned model an adapter file (or a seed folder) describes."""
    return Method.from_pretrained(path, device=device, backbone=backbone, precision=precision)
