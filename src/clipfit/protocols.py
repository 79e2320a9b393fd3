"""Evaluation protocols: which classes a run trains on, which test sets it reports, and what is derived
from their accuracies. The runner (`clipfit.runner`) does the rest.

few-shot: train on K shots of every class, test on all classes (CoOp, IJCV 2022, Sec. 4.1).
base2new: the classes sorted by label and split in halves, the first (base) trained, both halves tested,
with the harmonic mean of the mean accuracies (CoCoOp, CVPR 2022, Sec. 4.1; Dassl's `subsample_classes`).
cross-dataset: train on K shots of every class of the source (ImageNet in the papers), test the same run
on the source and on each target dataset's whole test set with the target's own class names and
template; report each and the targets' mean (CoCoOp Sec. 4.2, Table 2; CLIPFit App. D, Table 9).
distribution-shift: the same, the targets being the source's shifted test sets (ImageNet-V2, -Sketch, -A,
-R: CoCoOp Sec. 4.3, Table 3; CLIPFit Table 3 reports V2 and Sketch).
vtab: a VTAB-1k task (Zhai et al., 2019): train on train800val200 (or K shots of it), test on its test
list, all classes (the visual-PEFT papers' protocol; the PEFT-for-CLIP study's tasks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from . import data
from .errors import ClipFitError
from .registry import Registry

# The metric a transfer protocol derives: the mean accuracy over its targets (the papers' "Average").
TARGETS_MEAN = "average"


@dataclass(frozen=True)
class Protocol:
    """A registered protocol.

    ``evaluates_unseen``: whether it tests classes the run never trained on (so a classifier of the training
    classes only, a linear head, cannot take part). ``default_targets(source)``: the registered datasets whose
    whole test sets a transfer protocol evaluates besides the trained one (`RunConfig.targets` replaces
    them); None for a protocol that evaluates the trained dataset only. ``datasets``: which trained datasets
    the protocol applies to (None: any), and ``datasets_hint`` says which, for the refusal."""

    name: str
    # The training classes of the few-shot splits.
    train_classes: Callable[[data.DatasetSplits], data.DatasetSplits]
    # Named test sets of the trained dataset, each a set of classes evaluated on its test split.
    eval_sets: Callable[[data.DatasetSplits], dict[str, data.DatasetSplits]]
    # Derived columns, computed from the evaluated accuracies.
    derived: Callable[[dict[str, float]], dict[str, float]] = lambda metrics: {}
    evaluates_unseen: bool = False
    default_targets: Callable[[str], list[str]] | None = None
    datasets: Callable[[str], bool] | None = None
    datasets_hint: str = ""
    description: str = ""
    # For a method that searches a hyperparameter on validation: the dataset (name, data root) it trains,
    # searches and is tested on, when that differs from what `load_dataset` reads (VTAB-1k: train800 and
    # val200, then test.txt); None: the same splits as every method.
    search_splits: Callable[[str, str], data.DatasetSplits] | None = None
    # Whether training images are augmented by default (`RunConfig.augment`).
    augment: bool = True

    @property
    def transfers(self) -> bool:
        """Whether the protocol evaluates datasets other than the trained one."""
        return self.default_targets is not None


def harmonic_mean(base: float, new: float) -> float:
    return 0.0 if base + new == 0 else 2 * base * new / (base + new)


PROTOCOLS: Registry[Protocol] = Registry(
    "protocol", order=("few-shot", "base2new", "cross-dataset", "distribution-shift", "vtab")
)


def register_protocol(protocol: Protocol) -> Protocol:
    """Add a protocol under its name; a name taken by another protocol raises `ValueError`."""
    return PROTOCOLS.register(protocol.name, protocol)


def cross_dataset_targets(source: str) -> list[str]:
    """The other trainable datasets of the source's family (`DatasetSpec.family`: the CoOp eleven for
    ImageNet, as CoCoOp's Table 2 tests them), in registry order; `ClipFitError` when there are none."""
    family = data.get_spec(source).family
    targets = [
        name for name, spec in data.DATASETS.items()
        if family and spec.family == family and name != source and not spec.test_only
    ]
    if not targets:
        raise ClipFitError(
            f"protocol cross-dataset: dataset {source!r} belongs to no family of datasets with default targets; "
            "name them with --targets D [D ...]"
        )
    return targets


def shifted_targets(source: str) -> list[str]:
    """The registered test-only datasets that are shifts of the source (`DatasetSpec.shift_of`: ImageNet-V2,
    -Sketch, -A, -R for ImageNet), in registry order; `ClipFitError` when there are none."""
    targets = [name for name, spec in data.DATASETS.items() if spec.shift_of == source]
    if not targets:
        raise ClipFitError(
            f"protocol distribution-shift: no registered dataset is a shifted test set of {source!r}; "
            "name the targets with --targets D [D ...]"
        )
    return targets


def _all_classes(splits: data.DatasetSplits) -> data.DatasetSplits:
    return splits


register_protocol(Protocol(
    name="few-shot",
    train_classes=_all_classes,
    eval_sets=lambda splits: {"accuracy": splits},
    description="K shots of every class; test on all classes (CoOp)",
))
register_protocol(Protocol(
    name="base2new",
    train_classes=lambda splits: data.subsample_classes(splits, "base"),
    eval_sets=lambda splits: {
        "base": data.subsample_classes(splits, "base"), "new": data.subsample_classes(splits, "new")
    },
    derived=lambda m: {"hm": harmonic_mean(m["base"], m["new"])},
    evaluates_unseen=True,
    description="train on the first half of the classes, test both halves; HM of the means (CoCoOp)",
))
register_protocol(Protocol(
    name="cross-dataset",
    train_classes=_all_classes,
    eval_sets=lambda splits: {splits.name: splits},
    evaluates_unseen=True,
    default_targets=cross_dataset_targets,
    description="train on the source (16-shot ImageNet), test it and the other ten datasets (CoCoOp, CLIPFit Table 9)",
))
register_protocol(Protocol(
    name="distribution-shift",
    train_classes=_all_classes,
    eval_sets=lambda splits: {splits.name: splits},
    default_targets=shifted_targets,
    description="train on the source (16-shot ImageNet), test it and its shifted test sets "
    "(ImageNet-V2, -Sketch, -A, -R; CoCoOp, CLIPFit Table 3)",
))
def vtab_search_splits(name: str, root: str) -> data.DatasetSplits:
    """A VTAB-1k task as a method that searches on validation reads it: train800 to train and val200 to
    search (`data.load_vtab_tuning`), test.txt to test, as VTAB-1k tunes (Zhai et al., 2019, Sec. 3)."""
    final = data.load_dataset(name, root)
    tuning = data.load_vtab_tuning(name, root)
    return dataclasses.replace(tuning, test=final.test)


register_protocol(Protocol(
    name="vtab",
    train_classes=_all_classes,
    eval_sets=lambda splits: {"accuracy": splits},
    datasets=lambda name: data.get_spec(name).family == "vtab-1k",
    datasets_hint="a VTAB-1k task (vtab-<task>; `clipfit data list` lists them)",
    description="a VTAB-1k task: train on train800val200 (or K shots of it), test on its test list; "
    "a method that searches on validation trains on train800 and searches on val200",
    search_splits=vtab_search_splits,
    # VPT's VTAB-1k runs (KMnP/vpt: resize to 224, no crop or flip) and the PEFT-for-CLIP study (the
    # backbone's own preprocess for training too) augment nothing.
    augment=False,
))


def get_protocol(name: str) -> Protocol:
    """The protocol named ``name``; `ClipFitError` naming the registered ones otherwise."""
    return PROTOCOLS.lookup(name)
