"""Evaluation protocols: which classes a run trains on, which test sets it reports, and what is derived
from their accuracies (NOTES.md, "Protocols"). The runner (`clipfit.runner`) does the rest."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import data
from .errors import ClipFitError


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
