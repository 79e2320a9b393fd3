"""Evaluation protocols: which classes a run trains on, which test sets it reports, and what is derived
from their accuracies. The runner (`clipfit.runner`) does the rest.

few-shot: train on K shots of every class, test on all classes (CoOp, IJCV 2022, Sec. 4.1).
base2new: the classes sorted by label and split in halves, the first (base) trained, both halves tested,
with the harmonic mean of the mean accuracies (CoCoOp, CVPR 2022, Sec. 4.1; Dassl's `subsample_classes`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import data
from .registry import Registry


@dataclass(frozen=True)
class Protocol:
    """A registered protocol. ``evaluates_unseen``: whether it tests classes the run never trained on (so a
    classifier of the training classes only, a linear head, cannot take part)."""

    name: str
    # The training classes of the few-shot splits.
    train_classes: Callable[[data.DatasetSplits], data.DatasetSplits]
    # Named test sets, each a set of classes evaluated on its test split.
    eval_sets: Callable[[data.DatasetSplits], dict[str, data.DatasetSplits]]
    # Derived columns, computed from the evaluated accuracies.
    derived: Callable[[dict[str, float]], dict[str, float]] = lambda metrics: {}
    evaluates_unseen: bool = False


def harmonic_mean(base: float, new: float) -> float:
    return 0.0 if base + new == 0 else 2 * base * new / (base + new)


PROTOCOLS: Registry[Protocol] = Registry("protocol", order=("few-shot", "base2new"))


def register_protocol(protocol: Protocol) -> Protocol:
    """Add a protocol under its name; a name taken by another protocol raises `ValueError`."""
    return PROTOCOLS.register(protocol.name, protocol)


register_protocol(Protocol(
    name="few-shot",
    train_classes=lambda splits: splits,
    eval_sets=lambda splits: {"accuracy": splits},
))
register_protocol(Protocol(
    name="base2new",
    train_classes=lambda splits: data.subsample_classes(splits, "base"),
    eval_sets=lambda splits: {
        "base": data.subsample_classes(splits, "base"), "new": data.subsample_classes(splits, "new")
    },
    derived=lambda m: {"hm": harmonic_mean(m["base"], m["new"])},
    evaluates_unseen=True,
))


def get_protocol(name: str) -> Protocol:
    """The protocol named ``name``; `ClipFitError` naming the registered ones otherwise."""
    return PROTOCOLS.lookup(name)
