"""Tables written into a Markdown file between markers, so that a README quotes what a command measured.

A table named ``name`` lives between ``<!-- name:start -->`` and ``<!-- name:end -->``; the commands that
regenerate one (`clipfit table ...`, `benchmarks/*.py --readme`) check the markers before they run and
replace the text between them atomically afterwards.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import ClipFitError
from .files import atomic_write_text


def check_markers(readme: Path, names: list[str]) -> None:
    """`ClipFitError` naming the file when it lacks the markers of any of ``names`` (before the runs)."""
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError as err:
        raise ClipFitError(f"--readme {readme}: cannot be read ({err.strerror})") from None
    missing = [n for n in names if f"<!-- {n}:start -->" not in text or f"<!-- {n}:end -->" not in text]
    if missing:
        raise ClipFitError(
            f"{readme}: no <!-- {missing[0]}:start --> ... <!-- {missing[0]}:end --> markers to put the table between"
        )


def update_readme(readme: Path, markdown: str, name: str) -> None:
    """Replace the text between the README's `<!-- {name}:start -->` and `<!-- {name}:end -->` markers
    (written atomically); `ValueError` naming the file when it has none."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme}: no {start} ... {end} markers to put the table between")
    atomic_write_text(readme, pattern.sub(lambda _: f"{start}\n{markdown}\n{end}", text))
