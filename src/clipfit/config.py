"""Run configuration: one dataclass whose defaults reproduce the paper, written next to every run.

The bottom of the library's layers above errors and defaults: it imports neither torch nor any other
layer, so that a config is read and checked (`clipfit train --help`, a grid file) in milliseconds."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import string
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import defaults
from .defaults import IMAGE_CACHES
from .errors import ClipFitError

OPTIMIZERS = ("sgd", "adamw")
# How the learning rate moves: Dassl's constant warm-up epochs then a cosine stepped once per epoch
# (CoOp-family, CLIPFit); a cosine stepped once per iteration down to ``min_lr`` (torch's
# `CosineAnnealingLR` stepped every batch: Tip-Adapter-F, CLIP-LoRA); constant (the PEFT-for-CLIP study).
SCHEDULES = ("cosine-epochs", "cosine-iterations", "constant")


@dataclass
class OptimConfig:
    """The optimiser and its schedule. Every field left None is the method's default for the protocol,
    dataset and shots (`Method.optim_defaults`), else Dassl's (`DASSL`: SGD with momentum 0.9, weight
    decay 5e-4, one constant warm-up epoch at 1e-5, then cosine decay over the epochs stepped once per
    epoch, as CoOp (KaiyangZhou/CoOp, configs/trainers/CoOp) and CLIPFit configure it)."""

    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    warmup_epochs: int | None = None
    warmup_lr: float | None = None
    optimizer: str | None = None  # one of OPTIMIZERS
    schedule: str | None = None  # one of SCHEDULES
    # A budget in optimiser steps instead of epochs (CLIP-LoRA's 500 x shots): the loader is cycled and
    # training stops after this many steps. None: ``epochs`` full passes.
    iterations: int | None = None
    min_lr: float | None = None  # where "cosine-iterations" ends
    eps: float | None = None  # AdamW's epsilon (Tip-Adapter-F: 1e-4)


# Dassl's own defaults, for whatever a method does not name (every earlier run trained with these).
DASSL = {"batch_size": 32, "lr": 0.002, "momentum": 0.9, "weight_decay": 5e-4, "warmup_epochs": 1, "warmup_lr": 1e-5,
         "optimizer": "sgd", "schedule": "cosine-epochs", "min_lr": 0.0, "eps": 1e-8}


def complete(optim: OptimConfig, method_defaults: dict | None = None) -> OptimConfig:
    """``optim`` with every None field filled: the method's defaults first, then Dassl's. The length of
    training is one choice: where the user gave epochs or iterations, the method's other one is not added."""
    defaults = dict(method_defaults or {})
    if optim.epochs is not None or optim.iterations is not None:
        defaults.pop("epochs", None), defaults.pop("iterations", None)
    fill = {**DASSL, **defaults}
    return dataclasses.replace(optim, **{k: v for k, v in fill.items() if getattr(optim, k) is None})



@dataclass(frozen=True)
class Precision:
    """How a run computes: what autocast does, whether the loss is scaled, what dtype the CLIP's weights hold.

    Under every precision the loss terms, the logits (cosine similarities times the logit scale), the
    distillation term and the cross-entropy's softmax are computed in fp32 from the features the towers
    give, outside autocast (`Method.logits`, `Method.training_loss`), and the frozen distillation target
    is computed by the same forward pass as the tuned features, so that where the tuned weights equal
    the pretrained ones the two features are bit for bit equal and the term is 0. `clipfit.precision`
    applies it (autocast, weight layout); here it is data, so that a config is checked without torch.
    """

    name: str
    autocast_dtype: str | None  # a torch dtype's name ("bfloat16"); None: no autocast
    loss_scaling: bool = False  # a `torch.amp.GradScaler` scales the loss before backward
    weights_fp16: bool = False  # the CLIP's weights are converted to fp16 in place (the reference's layout)
    description: str = ""


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", None, description="everything in fp32"),
        Precision("bf16", "bfloat16",
                  description="bf16 autocast for the towers' matmuls; parameters, gradients and optimiser state fp32"),
        Precision("fp16", "float16", loss_scaling=True,
                  description="fp16 autocast with dynamic loss scaling (for GPUs without bf16); parameters, "
                              "gradients and optimiser state fp32"),
        Precision("fp16-reference", None, weights_fp16=True,
                  description="the reference's own precision (CoOp/Dassl TRAINER.COOP.PREC = fp16, the default "
                              "CLIPFit trains with): the CLIP's Conv/Linear/attention weights and projections in "
                              "fp16, LayerNorms and embeddings fp32, no autocast, no loss scaling; trainable "
                              "tensors keep their dtype, so SGD updates the fp16 text biases in fp16"),
    )
}


def get_precision(precision: str) -> Precision:
    """The `Precision` named ``precision``; `ClipFitError` naming the known ones otherwise."""
    if precision not in PRECISIONS:
        raise ClipFitError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def check_template(template: str) -> None:
    """A prompt template has exactly one ``{}`` (the class name) and no other format field; literal braces
    are written ``{{`` and ``}}``. Raises `ClipFitError` naming the template."""
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise ClipFitError(f"prompt template {template!r}: {err} (write a literal brace as {{{{ or }}}})") from None
    if fields == [("", "", None)]:
        return
    named = [name for name, _, _ in fields if name]
    if named:
        detail = f"a named field {{{named[0]}}}"
    elif len(fields) != 1:
        detail = f"{len(fields)} '{{}}'"
    else:
        detail = "a format spec or conversion"
    raise ClipFitError(
        f"prompt template {template!r} must have exactly one '{{}}' for the class name, and it has {detail}"
    )



# Fields of configs written by earlier versions, and how they read today.
LEGACY_FIELDS = {"cache_images": lambda on: {"image_cache": "resized-approximate" if on else "none"}}


@dataclass
class RunConfig:
    method: str = defaults.METHOD
    method_options: dict = field(default_factory=dict)
    model: str = defaults.MODEL
    pretrained: str = defaults.PRETRAINED
    dataset: str = "imagefolder"
    # The folder holding the datasets (for imagefolder the folder itself, for csv the file); None:
    # $CLIPFIT_DATA, else `defaults.CACHE_ROOT`/data (where the mini world's tasks are generated).
    data_root: str | None = None
    # Where few-shot draws are cached; None: beside the dataset, or under `defaults.CACHE_ROOT`/fewshot
    # when the dataset folder is read-only. Not part of the run's identity (the draw is the same wherever cached).
    cache_dir: str | None = None
    protocol: str = defaults.PROTOCOL
    # The datasets a transfer protocol (cross-dataset, distribution-shift) evaluates besides the trained one,
    # each on its whole test set; None: the protocol's own (`Protocol.default_targets`).
    targets: list[str] | None = None
    shots: int = defaults.SHOTS
    seeds: list[int] = field(default_factory=lambda: list(defaults.SEEDS))
    # None: the dataset's own template (CoOp's per-dataset prompt, `DatasetSpec.template`).
    template: str | None = None
    # A prompt ensemble (`clipfit.templates`): a named set (clip, clip-imagenet, clip-<dataset>), a file of
    # templates, or the templates themselves (a resolved run records a file's as its list). None: the single
    # template above. With both, `template` is what a method trains with and `templates` what the ensemble
    # replaces (each method's `templates_role`).
    templates: str | list[str] | None = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    # Training crops' area range (RandomResizedCrop's scale); None: the papers' (0.08, 1), or the dataset's
    # own lower bound where small crops no longer show the class (`DatasetSpec.min_crop_area`).
    crop_scale: tuple[float, float] | None = None
    # Random horizontal flips in training; None: the paper's flips, unless the dataset is not mirror-invariant.
    hflip: bool | None = None
    # Whether training images are augmented at all (the random crops and flips above); None: the protocol's
    # (off for vtab: VTAB-1k's papers and the PEFT-for-CLIP study train on the evaluation transform).
    augment: bool | None = None
    eval_batch_size: int = 100
    # How training images are kept between epochs (see IMAGE_CACHES and data.ImageDataset).
    image_cache: str = "decoded"
    # Memory budget of the "decoded" cache, in MiB (per data-loading process); images past it are
    # decoded on every read. A 500x375 photo takes 0.72 MiB (PIL keeps 4 bytes a pixel).
    image_cache_mb: int = defaults.IMAGE_CACHE_MB
    # fp32; bf16 or fp16 (with loss scaling): autocast the forward passes, parameters and optimiser state in
    # fp32; fp16-reference: the CLIP's weights in fp16, as CoOp-family code trains. Every loss term is fp32.
    precision: str = "fp32"
    num_workers: int = 0
    device: str = "auto"
    # Decode every image the run will read before training; None: when it reads at most
    # `defaults.CHECK_IMAGES_UP_TO` (2,000).
    check_images: bool | None = None
    # None: runs/<dataset>-<protocol>-<shots>shot-<method>-<model>-<8 hex digits of the setting>
    out: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> RunConfig:
        return _from_dict(cls, data, source)

    @classmethod
    def from_file(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ClipFitError(f"config file not found: {path}") from None
        except json.JSONDecodeError as err:
            raise ClipFitError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise ClipFitError(f"{path}: expected a JSON object of config fields")
        return cls.from_dict(data, str(path))


def _type_error(source: str, name: str, value, expected: str) -> ClipFitError:
    return ClipFitError(f"{source}: field {name!r} must be {expected}, got {json.dumps(value, default=repr)}")


def _typed(value, annotation, source: str, name: str):
    """``value`` read as ``annotation`` (int, float, str, bool, X | None, list[int], dict, tuple[float, float]);
    JSON's lists become tuples where a tuple is declared. Anything else raises `ClipFitError`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) > 1:  # str | list[str] (templates): the alternative of the value's JSON type
            kinds = [(a, typing.get_origin(a) or a) for a in inner]
            match = next((a for a, kind in kinds if isinstance(value, (list, tuple) if kind is list else kind)), None)
            if match is None:
                wants = " or ".join("a string" if a is str else "a list of strings" if a == list[str] else str(a)
                                    for a in inner)
                raise _type_error(source, name, value, wants)
            return _typed(value, match, source, name)
        return _typed(value, inner[0], source, name)
    if annotation is bool:
        if not isinstance(value, bool):  # "no", 0 or 1 would silently mean something else
            raise _type_error(source, name, value, "true or false")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(source, name, value, "an integer")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(source, name, value, "a number")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise _type_error(source, name, value, "a string")
        return value
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise _type_error(source, name, value, "an object")
        return dict(value)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _type_error(source, name, value, f"a list of {args[0].__name__}")
        return [_typed(v, args[0], source, name) for v in value]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise _type_error(source, name, value, f"a list of {len(args)} numbers")
        return tuple(_typed(v, a, source, name) for v, a in zip(value, args))
    raise TypeError(f"config field {name!r}: unsupported annotation {annotation!r}")  # a bug of ours, not the user's


def _from_dict(cls, data: dict, source: str):
    """``cls`` (RunConfig or OptimConfig) from a JSON object, every field type-checked."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    if cls is RunConfig:
        for name, translate in LEGACY_FIELDS.items():
            if name in data:
                new = translate(_typed(data[name], bool, source, name))
                both = sorted(set(new) & set(data))
                if both:
                    raise ClipFitError(f"{source}: fields {name!r} (written by an earlier version) and {both[0]!r} "
                                       f"are both given; keep {both[0]!r}")
                data = {**{k: v for k, v in data.items() if k != name}, **new}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ClipFitError(f"{source}: unknown field(s) {', '.join(unknown)} (known: {', '.join(fields)})")
    values = {}
    for name, value in data.items():
        if hints[name] is OptimConfig:
            if not isinstance(value, dict):
                raise _type_error(source, name, value, "an object")
            values[name] = _from_dict(OptimConfig, value, f"{source}: optim")
        else:
            values[name] = _typed(value, hints[name], source, name)
    return cls(**values)


def typed_fields(cls, values: dict, source: str) -> dict:
    """``values`` type-checked against the fields of dataclass ``cls`` (a method's options), as a config
    file's are; unknown names are left to the caller, which names the known ones."""
    hints = typing.get_type_hints(cls)
    return {
        name: _typed(value, hints[name], source, name) if name in hints else value for name, value in values.items()
    }


# The largest seed every generator we seed accepts (NumPy's legacy seeding takes 32 bits).
MAX_SEED = 2**32 - 1


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_device(device: str) -> str:
    """``device`` ("auto", "cpu", "cuda", "cuda:3", ...) as torch names it, once this machine has it;
    `ClipFitError` naming what was asked and what is available otherwise. "auto": a GPU when there is one."""
    import torch

    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "auto":
        return "cuda" if cuda else "cpu"
    available = ", ".join(["cpu", *(f"cuda:{i}" for i in range(cuda))])
    try:
        asked = torch.device(device)
    except (RuntimeError, ValueError):
        raise ClipFitError(f"device must be auto, cpu, cuda, cuda:N or another torch device, got {device!r} "
                           f"(available here: {available})") from None
    if asked.type == "cuda" and (asked.index or 0) >= cuda:
        raise ClipFitError(f"device {device!r} is not on this machine (available here: {available})")
    if asked.type not in ("cpu", "cuda"):  # mps, xpu, meta, ...: not what this tool trains and evaluates on
        raise ClipFitError(f"device {device!r} is not supported: use cpu or cuda (available here: {available})")
    return device


def validate(config: RunConfig) -> None:
    """Every value of ``config`` checked before anything runs; `ClipFitError` naming the field otherwise."""

    def bad(name: str, value, want: str) -> ClipFitError:
        return ClipFitError(f"{name} must be {want}, got {value!r}")

    optim = config.optim
    if optim.epochs is not None and (
        isinstance(optim.epochs, bool) or not isinstance(optim.epochs, int) or optim.epochs < 1
    ):
        raise bad("epochs", optim.epochs, "a whole number >= 1")
    for name in ("batch_size",):
        value = getattr(optim, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise bad(name.replace("_", "-"), value, "a whole number >= 1")
    if optim.epochs is not None and optim.iterations is not None:
        raise ClipFitError(f"give epochs ({optim.epochs}) or iterations ({optim.iterations}), not both: "
                           "each sets how long training runs")
    if optim.iterations is not None and (
        isinstance(optim.iterations, bool) or not isinstance(optim.iterations, int) or optim.iterations < 1
    ):
        raise bad("iterations", optim.iterations, "a whole number >= 1")
    if optim.warmup_epochs is not None and (
        isinstance(optim.warmup_epochs, bool) or not isinstance(optim.warmup_epochs, int) or optim.warmup_epochs < 0
    ):
        raise bad("warmup_epochs", optim.warmup_epochs, "a whole number >= 0")
    if optim.lr is not None and (not _finite(optim.lr) or optim.lr <= 0):
        raise bad("lr", optim.lr, "a finite number > 0")
    for name in ("warmup_lr", "weight_decay", "min_lr"):
        value = getattr(optim, name)
        if value is not None and (not _finite(value) or value < 0):
            raise bad(name, value, "a finite number >= 0")
    if optim.eps is not None and (not _finite(optim.eps) or optim.eps <= 0):
        raise bad("eps", optim.eps, "a finite number > 0")
    if optim.momentum is not None and (not _finite(optim.momentum) or not 0 <= optim.momentum < 1):
        raise bad("momentum", optim.momentum, "a number in [0, 1)")
    if optim.optimizer is not None and optim.optimizer not in OPTIMIZERS:
        raise bad("optimizer", optim.optimizer, f"one of {', '.join(OPTIMIZERS)}")
    if optim.schedule is not None and optim.schedule not in SCHEDULES:
        raise bad("schedule", optim.schedule, f"one of {', '.join(SCHEDULES)}")
    if optim.iterations is not None and optim.schedule == "cosine-epochs":
        raise ClipFitError("iterations (a budget of steps) needs a per-iteration schedule (optim.schedule "
                           "cosine-iterations or constant); this one, cosine-epochs, steps once per epoch: "
                           "give epochs instead")
    if isinstance(config.shots, bool) or not isinstance(config.shots, int) or config.shots < 0:
        raise bad("shots", config.shots, "a whole number >= 0 (0: every training image)")
    if not config.seeds:
        raise bad("seeds", config.seeds, "at least one seed")
    for seed in config.seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise bad("seed", seed, f"a whole number from 0 to {MAX_SEED}")
    repeated = sorted({s for s in config.seeds if config.seeds.count(s) > 1})
    if repeated:
        raise ClipFitError(f"seeds must differ: {', '.join(map(str, repeated))} is given more than once")
    for name in ("eval_batch_size",):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad(name, value, "a whole number >= 1")
    for name in ("num_workers", "image_cache_mb"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad(name, value, "a whole number >= 0")
    # More loader processes than this only wait on each other (and tens of thousands never start).
    most_workers = 4 * (os.cpu_count() or 1)
    if config.num_workers > most_workers:
        raise bad("num_workers", config.num_workers, f"at most {most_workers} (4 per CPU core)")
    for name in ("method", "model", "pretrained", "dataset", "protocol"):
        if not getattr(config, name).strip():
            what = "an open_clip tag, a checkpoint file, 'builtin' or 'none'" if name == "pretrained" else "a name"
            raise bad(name, getattr(config, name), what)
    low, high = config.crop_scale or (0.08, 1.0)
    if not (_finite(low) and _finite(high) and 0 < low <= high <= 1):
        raise bad("crop_scale", list(config.crop_scale), "two numbers 0 < low <= high <= 1")
    if config.image_cache not in IMAGE_CACHES:
        raise bad("image_cache", config.image_cache, f"one of {', '.join(IMAGE_CACHES)}")
    if config.precision not in PRECISIONS:
        raise bad("precision", config.precision, f"one of {', '.join(PRECISIONS)}")
    if config.device != "auto":
        check_device(config.device)
    if config.template is not None:
        check_template(config.template)
    if config.templates is not None:
        from .templates import check_templates  # it imports this module

        check_templates(config.templates)
    if config.out is not None and Path(config.out).expanduser().exists() and not Path(config.out).expanduser().is_dir():
        raise ClipFitError(f"--out {config.out} is a file, not a folder")
