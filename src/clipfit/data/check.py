"""``check_dataset``: what a dataset needs on disk, what is there, and what is missing."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from clipfit.errors import DataError

from .readers import misplaced_hint
from .registry import _absolute, get_spec

MISSING_SHOWN = 5


@dataclass
class DataCheckReport:
    name: str
    root: Path
    ok: bool = True
    lines: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        head = f"dataset {self.name!r} under {self.root}: {'OK' if self.ok else 'PROBLEMS FOUND'}"
        return "\n".join([head, *(f"  {line}" for line in self.lines)])


def check_dataset(name: str, root: str | Path) -> DataCheckReport:
    """Report every expected file and folder as present or MISSING, then counts when readable."""
    spec = get_spec(name)
    root = _absolute(root)
    report = DataCheckReport(name, root)
    for exp in spec.expected(root, spec):
        present = exp.path.is_dir() if exp.kind == "dir" else exp.path.is_file()
        if present:
            report.lines.append(f"present  {exp.path}  ({exp.description})")
            continue
        report.ok = False
        report.lines.append(f"MISSING  {exp.path}  -- {exp.description}")
        if exp.kind == "file" and spec.folder:
            hint = misplaced_hint(root, spec, exp.path)
            if hint:
                report.lines.append(f"         {hint.lstrip('; ')}")
        elif exp.kind == "dir" and exp.path.parent.is_dir():
            near = [p for p in exp.path.parent.iterdir() if p.name.lower() == exp.path.name.lower() and p != exp.path]
            if near:
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
    missing = [s.path for split in (splits.train, splits.val, splits.test) for s in split if not os.path.isfile(s.path)]
    if missing:
        report.ok = False
        report.lines.append(f"MISSING  {len(missing)} image file(s) the split lists, e.g.:")
        report.lines += [f"         {p}" for p in missing[:MISSING_SHOWN]]
    else:
        report.lines.append("every listed image file exists")
    return report
