"""The plain records every reader returns: one image, and one dataset's three splits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from clipfit.config import check_template  # noqa: F401  (re-exported: readers check templates)

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
