"""The two protocol-level views of a dataset: the few-shot draw and the base/new class split."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path
from typing import Literal

from clipfit.errors import ClipFitError, DataError
from clipfit.files import atomic_write_text

from .samples import DatasetSplits, Sample

FEWSHOT_FORMAT = "clipfit-fewshot/1"
VAL_SHOTS_MAX = 4


def fewshot_cache_file(cache_dir: Path, shots: int, seed: int) -> Path:
    return Path(cache_dir) / f"shot_{shots}-seed_{seed}.json"


def _by_label(samples: list[Sample], num_classes: int) -> list[list[Sample]]:
    groups: list[list[Sample]] = [[] for _ in range(num_classes)]
    for s in samples:
        groups[s.label].append(s)
    return groups


def _draw(splits: DatasetSplits, shots: int, seed: int) -> tuple[list[Sample], list[Sample]]:
    n = splits.num_classes
    train_groups = _by_label(splits.train, n)
    val_groups = _by_label(splits.val, n)
    train_rng = random.Random(f"clipfit/fewshot/train/{seed}")
    val_rng = random.Random(f"clipfit/fewshot/val/{seed}")
    val_shots = min(shots, VAL_SHOTS_MAX)
    train: list[Sample] = []
    val: list[Sample] = []
    for label in range(n):
        pool = sorted(train_groups[label], key=lambda s: s.path)
        if len(pool) < shots:
            raise DataError(
                f"dataset {splits.name!r}: class {splits.classnames[label]!r} (label {label}) has "
                f"{len(pool)} train image(s), fewer than shots={shots}"
            )
        train += train_rng.sample(pool, shots)
        # val is not used for model selection: a class with fewer val images keeps them all.
        vpool = sorted(val_groups[label], key=lambda s: s.path)
        val += val_rng.sample(vpool, min(val_shots, len(vpool)))
    return train, val


def _key(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def _write_atomic(path: Path, payload: dict) -> None:
    try:
        atomic_write_text(path, json.dumps(payload, indent=1))
    except OSError as exc:
        raise DataError(
            f"cannot write few-shot cache {path}: {exc}; pass a writable cache_dir to fewshot()"
        ) from None


def _read_cache(path: Path, splits: DatasetSplits, shots: int, seed: int) -> tuple[list[Sample], list[Sample]]:
    stale = f"few-shot cache {path} does not match dataset {splits.name!r}"
    fix = f"; delete {path} to redraw (methods compared on one seed must share one draw)"
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"few-shot cache {path} cannot be read: {exc}{fix}") from None
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
                raise DataError(f"few-shot cache {path}: {split}[{i}] is {_short(row)}, not [path, label, classname]{fix}")
            s = current.get(row[0])
            if s is None or [s.label, s.classname] != row[1:]:
                raise DataError(
                    f"{stale}: {split}[{i}] {row[0]!r} (label {row[1]!r}) is not in the dataset's {split} split{fix}"
                )
            chosen.append(s)
        out[split] = chosen
    counts = [0] * splits.num_classes
    for s in out["train"]:
        counts[s.label] += 1
    if any(c != shots for c in counts):
        raise DataError(f"{stale}: it does not hold {shots} train images per class{fix}")
    return out["train"], out["val"]


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fewshot(splits: DatasetSplits, shots: int | None, seed: int, cache_dir: Path | None = None) -> DatasetSplits:
    """K train images per class drawn with ``seed``, val min(K, 4) per class, test untouched.

    ``shots`` None or <= 0 returns every image. With ``cache_dir`` the draw is stored as
    ``<cache_dir>/shot_{K}-seed_{seed}.json`` on first use and read back afterwards, so every method
    sees the same images; a cache that no longer matches the dataset raises ``DataError``.
    (Pass ``splits.fewshot_dir`` for the dataset's standard location.)
    """
    if shots is None or shots <= 0:
        return dataclasses.replace(splits, train=list(splits.train), val=list(splits.val), test=list(splits.test))
    if cache_dir is None:
        train, val = _draw(splits, shots, seed)
    else:
        path = fewshot_cache_file(Path(cache_dir), shots, seed)
        if path.exists():
            train, val = _read_cache(path, splits, shots, seed)
        else:
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
