"""The registry that names the methods: `METHODS`, and how a method is looked up, configured and built.

A method registers under its `name` (`register_method`); a variant is a method with some options fixed
(`register_variant`: `coop+ln` is `coop` with layernorm=True), not a new implementation.
"""

from __future__ import annotations

import dataclasses

from ..backbone import Backbone
from ..errors import ClipFitError
from ..registry import Registry
from .base import Method, MethodConfig, Regime

# Listing order (`clipfit methods`, the leaderboard's rows before sorting): CLIPFit and its Table 5-6
# ablations, the CoOp family, zero-shot, the adapter family, CLIP-LoRA, VPT; a plugin's methods follow
# alphabetically.
METHODS: Registry[type[Method]] = Registry("method", order=(
    "clipfit", "bitfit-all", "bitfit-text", "bitfit-text-mlp", "bitfit-text-proj", "ln-only", "clipfit-no-kd",
    "clipfit-no-ln", "coop", "coop+ln", "kgcoop", "kgcoop+ln", "prograd", "cocoop", "maple", "zeroshot",
    "linear-probe", "clip-adapter", "clip-adapter+ln", "tip-adapter", "tip-adapter-f", "clip-lora", "vpt-shallow",
    "vpt-deep"))


def register_method(cls: type[Method]) -> type[Method]:
    """Add a method under `cls.name`; a name taken by another class raises `ValueError`."""
    return METHODS.register(cls.name, cls)


def register_variant(base: type[Method], name: str, description: str, **preset) -> type[Method]:
    """Register `base` with some options fixed under a name of its own (CLIPFit's Table 4-6 variants:
    `coop+ln`, `bitfit-text`, ...): a config of one method plus its name, not a new implementation."""
    unknown = sorted(set(preset) - {f.name for f in dataclasses.fields(base.config_class)})
    if unknown:
        raise ValueError(f"variant {name!r}: {base.name} has no option(s) {', '.join(unknown)}")
    variant = type(base.__name__ + "Variant", (base,), {
        "name": name, "description": description, "preset": {**base.preset, **preset}, "__module__": base.__module__})
    return register_method(variant)


def method_config(name: str, options: dict | None = None) -> MethodConfig:
    """The method's config from user options over its preset; `ClipFitError` for an unknown option or
    one that contradicts what the variant fixes."""
    cls = get_method(name)
    options = dict(options or {})
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ClipFitError(f"method {name!r} has no option(s) {', '.join(unknown)} "
                           f"(options: {', '.join(sorted(fields)) or 'none'})")
    for key, value in cls.preset.items():
        if key in options and options[key] != value:
            raise ClipFitError(f"method {name!r} fixes option {key} = {value!r} (got {options[key]!r}); "
                               f"use the base method {cls.__mro__[1].name!r} to change it")
    config = cls.config_class(**{**options, **cls.preset})
    config.check()
    return config


def get_method(name: str) -> type[Method]:
    """The registered method class named ``name``; `ClipFitError` naming close matches otherwise."""
    return METHODS.lookup(name)


def build_method(name: str, backbone: Backbone, classnames: list[str], template: str,
                 options: dict | None = None, *, templates: list[str] | None = None) -> Method:
    """Method ``name`` on ``backbone`` for ``classnames``, with ``template`` and ``options``; ``templates``:
    a prompt ensemble (`Method.set_templates`; `ClipFitError` from a method that refuses one)."""
    cls = get_method(name)
    method = cls(backbone, classnames, template, method_config(name, options))
    if templates is not None:
        method.set_templates(templates)
    return method


def inapplicable_reason(name: str, backbone: Backbone, options: dict | None = None) -> str | None:
    """Why method ``name`` with ``options`` cannot apply to ``backbone``'s architecture, as the one line its
    construction raises (no LayerNorm to train in a ResNet image tower, no open_clip ViT for visual prompts,
    no causal text tower for learned text prompts); None when it applies. A weightless skeleton
    (`clipfit.backbone.skeleton_backbone`) will do: what a method selects depends on the structure only."""
    try:
        build_method(name, backbone, ["class"], "{}", options)
    except ClipFitError as err:
        return str(err)
    return None


def method_regime(name: str, options: dict | None = None) -> Regime:
    """How the engine trains method ``name`` with ``options`` (checked as `method_config` checks them)."""
    return get_method(name).training_regime(method_config(name, options))
