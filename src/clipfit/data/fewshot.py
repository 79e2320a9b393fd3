"""The two protocol-level views of a dataset: the few-shot draw and the base/new class split."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import warnings
from pathlib import Path
from typing import Literal

from clipfit.errors import ClipFitError, DataError
from clipfit.files import atomic_write_text, text_from_path

from .samples import DatasetSplits, Sample

# Version 2: Dassl's draw (one stream, classes in order of first appearance). Version 1 drew other
# images (a stream per split, each class's images sorted by path); its caches are redrawn, never reused.
FEWSHOT_FORMAT = "clipfit-fewshot/2"
OLD_FEWSHOT_FORMATS = ("clipfit-fewshot/1",)
VAL_SHOTS_MAX = 4


def fewshot_cache_file(cache_dir: Path, shots: int, seed: int) -> Path:
    return Path(cache_dir) / f"shot_{shots}-seed_{seed}.json"


def _sample_per_class(rng: random.Random, samples: list[Sample], shots: int) -> list[Sample]:
    """Dassl's `generate_fewshot_dataset` on one list: group by label, labels in order of first appearance,
    each group in list order; `rng.sample(group, shots)` per group, or the whole group when it is smaller."""
    groups: dict[int, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.label, []).append(s)
    chosen: list[Sample] = []
    for group in groups.values():
        chosen += rng.sample(group, shots) if len(group) >= shots else group
    return chosen


def _draw(splits: DatasetSplits, shots: int, seed: int) -> tuple[list[Sample], list[Sample]]:
    # CoOp seeds Python's global `random` with the run's seed at start-up (nothing draws from it before
    # the dataset is read), then draws train and val from that one stream: the same images, in the same
    # order, as every CoOp-family paper's `split_fewshot/shot_K-seed_S.pkl`.
    rng = random.Random(seed)
    train = _sample_per_class(rng, splits.train, shots)
    val = _sample_per_class(rng, splits.val, min(shots, VAL_SHOTS_MAX))
    return train, val


def classes_short_of(splits: DatasetSplits, shots: int) -> list[tuple[str, int]]:
    """(class name, train images) of every class with fewer than ``shots`` train images: a few-shot draw
    keeps all of them, as Dassl's sampler does."""
    counts = [0] * splits.num_classes
    for s in splits.train:
        counts[s.label] += 1
    return [(splits.classnames[label], n) for label, n in enumerate(counts) if n < shots]


def _key(path: Path, base: Path) -> str:
    """How the cache names an image: its path under ``base`` as text (UTF-8 whatever the locale, so a
    draw cached under one locale is found under another)."""
    try:
        return text_from_path(path.relative_to(base).as_posix())
    except ValueError:
        return text_from_path(path.as_posix())


def _write_atomic(path: Path, payload: dict) -> None:
    try:
        atomic_write_text(path, json.dumps(payload, indent=1))
    except OSError as exc:
        raise DataError(
            f"cannot write few-shot cache {path}: {exc}; "
            "choose a writable folder for draws with --cache-dir (cache_dir=)"
        ) from None


def _read_cache(path: Path, splits: DatasetSplits, shots: int, seed: int) -> tuple[list[Sample], list[Sample]] | None:
    """The cached draw; None for a cache in an older format (drawn another way, so it must be redrawn)."""
    stale = f"few-shot cache {path} does not match dataset {splits.name!r}"
    fix = f"; delete {path} to redraw (methods compared on one seed must share one draw)"
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"few-shot cache {path} cannot be read: {exc}{fix}") from None
    if isinstance(data, dict) and data.get("format") in OLD_FEWSHOT_FORMATS:
        return None
    if not isinstance(data, dict) or data.get("format") != FEWSHOT_FORMAT:
        raise DataError(f"few-shot cache {path} is not a {FEWSHOT_FORMAT} file{fix}")
    for field, want in (("dataset", splits.name), ("shots", shots), ("seed", seed), ("classnames", splits.classnames)):
        if data.get(field) != want:
            raise DataError(f"{stale}: {field} is {_short(data.get(field))}, the dataset has {_short(want)}{fix}")
    base = path.parent.parent
    out: dict[str, list[Sample]] = {}
    for split in ("train", "val"):
        current = {_key(s.path, base): s for s in getattr(splits, split)}
        rows = data.get(split)
        if not isinstance(rows, list):
            raise DataError(f"few-shot cache {path}: {split!r} is missing or not a list{fix}")
        chosen = []
        for i, row in enumerate(rows):
            if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str)):
                raise DataError(
                    f"few-shot cache {path}: {split}[{i}] is {_short(row)}, not [path, label, classname]{fix}"
                )
            s = current.get(row[0])
            if s is None or [s.label, s.classname] != row[1:]:
                raise DataError(
                    f"{stale}: {split}[{i}] {row[0]!r} (label {row[1]!r}) is not in the dataset's {split} split{fix}"
                )
            chosen.append(s)
        out[split] = chosen
    counts, available = [0] * splits.num_classes, [0] * splits.num_classes
    for s in out["train"]:
        counts[s.label] += 1
    for s in splits.train:
        available[s.label] += 1
    if any(c != min(shots, a) for c, a in zip(counts, available)):
        raise DataError(f"{stale}: it does not hold min({shots}, the class's images) train images per class{fix}")
    return out["train"], out["val"]


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fewshot(splits: DatasetSplits, shots: int | None, seed: int, cache_dir: Path | None = None) -> DatasetSplits:
    """K train images per class drawn with ``seed``, val min(K, 4) per class, test untouched.

    The draw is Dassl's (KaiyangZhou/Dassl.pytorch@c61a1b5 `dassl/data/datasets/base_dataset.py`
    `DatasetBase.generate_fewshot_dataset`, as KaiyangZhou/CoOp@ff61507's `datasets/*.py` readers call it):
    the same images, in the same order, that CoOp, CoCoOp, KgCoOp, MaPLe and CLIPFit train on for this
    seed and split file. A class with fewer than K images keeps all of them (see `classes_short_of`).
    ``shots`` None or <= 0 returns every image. With ``cache_dir`` the draw is stored as
    ``<cache_dir>/shot_{K}-seed_{seed}.json`` on first use and read back afterwards, so every method
    sees the same images; a cache that no longer matches the dataset raises ``DataError``, and one
    written by an older version of the draw is redrawn (with a warning). (Pass ``splits.fewshot_dir``
    for the dataset's standard location.)
    """
    if shots is None or shots <= 0:
        return dataclasses.replace(splits, train=list(splits.train), val=list(splits.val), test=list(splits.test))
    if cache_dir is None:
        train, val = _draw(splits, shots, seed)
    else:
        path = fewshot_cache_file(Path(cache_dir), shots, seed)
        cached = _read_cache(path, splits, shots, seed) if path.exists() else None
        if cached is not None:
            train, val = cached
        else:
            if path.exists():
                warnings.warn(f"few-shot cache {path} was drawn by an older version of the sampler (not "
                              f"Dassl's); redrawing it", stacklevel=2)
            train, val = _draw(splits, shots, seed)
            base = path.parent.parent
            _write_atomic(
                path,
                {
                    "format": FEWSHOT_FORMAT,
                    "dataset": splits.name,
                    "shots": shots,
                    "seed": seed,
                    "classnames": splits.classnames,
                    "paths_relative_to": "the folder holding this file's folder, unless absolute",
                    "train": [[_key(s.path, base), s.label, s.classname] for s in train],
                    "val": [[_key(s.path, base), s.label, s.classname] for s in val],
                },
            )
    return dataclasses.replace(splits, train=train, val=val, test=list(splits.test))


def subsample_classes(splits: DatasetSplits, which: Literal["all", "base", "new"]) -> DatasetSplits:
    """Base-to-new: base = the first ceil(n/2) labels, new = the rest, each half relabelled from 0."""
    if which == "all":
        return dataclasses.replace(splits, train=list(splits.train), val=list(splits.val), test=list(splits.test))
    if which not in ("base", "new"):
        raise ClipFitError(f"subsample must be 'all', 'base' or 'new', not {which!r}")
    n = splits.num_classes
    m = math.ceil(n / 2)
    keep = range(0, m) if which == "base" else range(m, n)
    offset = keep.start
    classnames = [splits.classnames[i] for i in keep]

    def relabel(samples: list[Sample]) -> list[Sample]:
        return [Sample(s.path, s.label - offset, s.classname) for s in samples if s.label in keep]

    return dataclasses.replace(
        splits,
        classnames=classnames,
        train=relabel(splits.train),
        val=relabel(splits.val),
        test=relabel(splits.test),
    )
