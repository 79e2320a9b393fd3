"""The plain records every reader returns: one image, and one dataset's three splits."""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path

from clipfit.errors import ClipFitError

DEFAULT_TEMPLATE = "a photo of a {}."


@dataclass(frozen=True)
class Sample:
    """One labelled image. ``label`` indexes the owning ``DatasetSplits.classnames``."""

    path: Path
    label: int
    classname: str


@dataclass
class DatasetSplits:
    """A dataset as the engine sees it: class names, one prompt template and three sample lists.

    ``fewshot_dir`` is where this dataset's few-shot draws are cached by default
    (``<data-root>/<folder>/split_fewshot`` for a registered dataset); pass it to ``fewshot``.
    """

    name: str
    classnames: list[str]
    template: str
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    fewshot_dir: Path | None = field(default=None, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def prompts(self) -> list[str]:
        """The template filled with every class name, in label order."""
        return [self.template.format(c) for c in self.classnames]

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def clean_classname(raw: str) -> str:
    """Class names as prompts use them: underscores become spaces, outer whitespace goes."""
    return raw.replace("_", " ").strip()


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
    raise ClipFitError(f"prompt template {template!r} must have exactly one '{{}}' for the class name, and it has {detail}")
