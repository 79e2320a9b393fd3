"""``check_dataset``: what a dataset needs on disk, what is there, what is missing or unreadable."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from clipfit.defaults import CHECK_IMAGES_UP_TO
from clipfit.errors import DataError

from .images import unreadable_images
from .readers import SPLITS, misplaced_hint
from .registry import Expectation, _absolute, get_spec
from .samples import Sample

MISSING_SHOWN = 5
UNREADABLE_SHOWN = 20


@dataclass
class DataCheckReport:
    """What ``check_dataset`` found; ``str()`` prints it. ``unreadable``: every (path, reason) that did
    not decode, all of them (the printed lines show the first ``UNREADABLE_SHOWN``)."""

    name: str
    root: Path
    ok: bool = True
    lines: list[str] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    def __str__(self) -> str:
        head = f"dataset {self.name!r} under {self.root}: {'OK' if self.ok else 'PROBLEMS FOUND'}"
        return "\n".join([head, *(f"  {line}" for line in self.lines)])


def check_dataset(name: str, root: str | Path, *, decode: bool | None = None) -> DataCheckReport:
    """Report every expected file and folder as present or MISSING, then counts, empty splits, missing
    image files and, with ``decode``, every image that cannot be decoded.

    ``decode``: True opens and fully decodes every listed image of every split (``unreadable_images``),
    False decodes none, None decodes when the dataset lists at most ``CHECK_IMAGES_UP_TO`` images. The report
    is not ok when anything is missing, a split the dataset needs (train, val and test; test alone for a
    test-only dataset) is empty, or an image does not decode. Never raises for bad data: a malformed
    split file is an ERROR line.
    """
    spec = get_spec(name)
    root = _absolute(root)
    report = DataCheckReport(name, root)
    expected = spec.expected(root, spec)
    if spec.prepare is not None and spec.split_file and (root / spec.split_file).is_file():
        report.ok = False
        report.lines.append(f"ERROR    {root} is the dataset's own folder: pass the folder that holds it, "
                            f"--data-root {root.parent}")
        return report
    if spec.prepare is not None and not all(_present(exp) for exp in expected):
        # Generated, not downloaded (the mini world's tasks): `clipfit train` / `demo` write it on first use.
        report.lines.append(
            f"note     not generated yet: {spec.data_dir(root)} is generated on first use "
            "(by `clipfit train` or `clipfit demo`); nothing to download"
        )
        return report
    for exp in expected:
        if _present(exp):
            report.lines.append(f"present  {exp.path}  ({exp.description})")
            continue
        report.ok = False
        if exp.path.exists():  # there, but a file where a folder is expected or the reverse
            wrong = "a folder, not a file" if exp.path.is_dir() else "a file, not a folder"
            report.lines.append(f"WRONG    {exp.path} is {wrong}  -- expected {exp.description}")
            continue
        report.lines.append(f"MISSING  {exp.path}  -- {exp.description}")
        if exp.kind == "file" and spec.folder:
            hint = misplaced_hint(root, spec, exp.path)
            if hint:
                report.lines.append(f"         {hint.lstrip('; ')}")
        elif exp.kind == "dir":
            hint = exp.hint() if exp.hint is not None else ""
            near = []
            if not hint and exp.path.parent.is_dir():
                wanted = exp.path.name.lower()
                near = [p for p in exp.path.parent.iterdir() if p.name.lower() == wanted and p != exp.path]
            if hint:
                report.lines.append(f"         {hint}")
            elif near:
                report.lines.append(f"         found {near[0]} instead: rename it to {exp.path.name}")
    if not report.ok:
        return report
    try:
        splits = spec.reader(root, spec)
    except DataError as exc:
        report.ok = False
        report.lines.append(f"ERROR    {exc}")
        return report
    counts = splits.counts()
    report.lines.append(
        f"classes: {splits.num_classes}; images: "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
    )
    # Runs train on train and report on test; val is drawn but never selects anything (as in CoOp).
    for split in ("test",) if spec.test_only else SPLITS:
        if getattr(splits, split):
            continue
        if split == "val":
            report.lines.append("note     split 'val' lists no images (no run needs it)")
        else:
            report.ok = False
            report.lines.append(f"EMPTY    split {split!r} lists no images")
    samples = splits.train + splits.val + splits.test
    listed = list(dict.fromkeys(s.path for s in samples))
    missing = [p for p in listed if not os.path.isfile(p)]
    if missing:
        report.ok = False
        report.lines.append(f"MISSING  {len(missing)} image file(s) the split lists, e.g.:")
        report.lines += [f"         {p}" for p in missing[:MISSING_SHOWN]]
    else:
        report.lines.append("every listed image file exists")
    if decode is None:
        decode = len(listed) <= CHECK_IMAGES_UP_TO
        if not decode:
            report.lines.append(f"images not decoded ({len(listed)} > {CHECK_IMAGES_UP_TO}); pass --decode")
    elif not decode:
        report.lines.append("images not decoded (--no-decode)")
    if decode:
        absent = set(missing)  # already reported above
        _report_decoding(report, [s for s in samples if s.path not in absent], len(listed) - len(absent))
    return report


def _present(exp: Expectation) -> bool:
    return exp.path.is_dir() if exp.kind == "dir" else exp.path.is_file()


def _report_decoding(report: DataCheckReport, samples: list[Sample], n_images: int) -> None:
    """Decode the ``n_images`` distinct images of ``samples`` and add what failed to ``report``."""
    report.unreadable = unreadable_images(samples)
    if not report.unreadable:
        report.lines.append(f"all {n_images} image(s) decode")
        return
    report.ok = False
    report.lines.append(f"UNREADABLE  {len(report.unreadable)} of {n_images} image(s):")
    report.lines += [f"         {p}  -- {reason}" for p, reason in report.unreadable[:UNREADABLE_SHOWN]]
    if len(report.unreadable) > UNREADABLE_SHOWN:
        report.lines.append(f"         and {len(report.unreadable) - UNREADABLE_SHOWN} more")
