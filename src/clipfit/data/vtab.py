"""VTAB-1k's 19 tasks (Zhai et al., 2019, arXiv:1910.04867) in the image-list layout the visual-PEFT papers share.

Layout, under the data root: ``vtab-1k/<task folder>/`` holding ``train800.txt``, ``val200.txt``,
``train800val200.txt`` and ``test.txt``, each line ``<image path relative to the task folder> <label>``, as
ZhangYuanhan-AI/NOAH's ``data/vtab-source/get_vtab1k.py`` exports them from TFDS (``images/<list>/000000.jpg``)
and NOAH, JieShibo/PETL-ViT (FacT), dongzelian/SSF and sony/MambaPEFT read them. Task folders are the
export's names (``cifar``, ``oxford_iiit_pet``, ...); NOAH's run scripts name two of them otherwise
(``cifar100``, ``oxford_pet``), and both are accepted, as are ``clevr_distance`` and ``retinopathy``. The
folder holding them may be spelled ``vtab-1k`` or ``vtab1k``, or be the data root itself (FacT's
``./data/<task>``). Which names each task accepts, its title, group, prompt template and class names (in
TFDS's label order, which the lists use) are data, in ``vtab1k.json`` beside this file, each with its source.

The splits a task reads: train = ``train800val200``, val = ``val200`` (inside train, as in VTAB-1k's final
runs: val only serves a method's own search, Tip-Adapter's or the linear probe's, never the reported
number), test = ``test.txt``. `load_vtab_tuning` reads the pair a hyperparameter search uses instead
(train800 to train, val200 to evaluate; test.txt never read). ``--shots K`` draws K per class from train
(`clipfit.data.fewshot`), as the PEFT-for-CLIP study (Andy-LZH/peft4clip) draws from its training pool.

A training list that shares an image with test.txt (the same path, or the same file under another name) is
refused: the study's PCam reads train800val200 for both, and its SUN397 sampler can overlap them.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from clipfit.errors import DataError
from clipfit.files import path_from_text

from .readers import FEWSHOT_DIRNAME, PROBE_IMAGES, _read_lines, _unique_classnames, relocated_images_hint
from .registry import DATASETS, DatasetSpec, Expectation, _absolute, get_spec, register_dataset
from .samples import DatasetSplits, Sample

VTAB_FILE = Path(__file__).resolve().with_name("vtab1k.json")
# The four lists of a task folder, by the split they hold.
LISTS = {"train800": "train800.txt", "val200": "val200.txt", "train800val200": "train800val200.txt",
         "test": "test.txt"}
# The folders a task folder may lie in, relative to the data root, in the order they are looked at.
PARENTS = ("vtab-1k", "vtab1k", "")
GROUPS = ("natural", "specialized", "structured")
# Where a tuning read (`load_vtab_tuning`) caches its few-shot draws, beside the final read's split_fewshot.
TUNING_FEWSHOT_DIRNAME = f"{FEWSHOT_DIRNAME}_train800"


@dataclass(frozen=True)
class VtabSpec(DatasetSpec):
    """A VTAB-1k task: a `DatasetSpec` with the task's name, its group (natural, specialized, structured),
    the folder names it accepts (the first is the one expected), its class names in label order and the TFDS
    builder its lists were exported from. ``data_dir`` is the accepted folder that holds a list file."""

    task: str = ""
    group: str = ""
    folders: tuple[str, ...] = ()
    classnames: tuple[str, ...] = ()
    tfds: str = ""

    def candidates(self, root: str | Path) -> list[Path]:
        """Every folder this task may be in, in the order they are looked at."""
        return [Path(root) / parent / folder for parent in PARENTS for folder in self.folders]

    def found(self, root: str | Path) -> list[Path]:
        """The candidate folders that hold at least one of the four lists."""
        return [d for d in self.candidates(root) if any((d / name).is_file() for name in LISTS.values())]

    def data_dir(self, root: str | Path) -> Path:
        found = self.found(root)
        return found[0] if found else Path(root) / PARENTS[0] / self.folders[0]


def _load_tasks() -> dict[str, dict]:
    try:
        with open(VTAB_FILE, encoding="utf-8") as f:
            return json.load(f)["tasks"]
    except (OSError, ValueError, KeyError) as exc:  # a broken installation, not the user's data
        raise DataError(f"{VTAB_FILE} cannot be read: {exc}; reinstall clipfit") from None


def _accepted(spec: VtabSpec) -> str:
    return ", ".join(f"{parent}/{folder}" if parent else f"{folder} (in the data root itself)"
                     for parent in PARENTS for folder in spec.folders)


def expect_vtab(root: Path, spec: DatasetSpec) -> list[Expectation]:
    assert isinstance(spec, VtabSpec)
    d = spec.data_dir(root)
    n = len(spec.classnames)
    out = [Expectation(d, f"VTAB-1k task folder of {spec.title} (accepted: {_accepted(spec)})", "dir",
                       hint=lambda: _task_folder_hint(root, spec))]
    out += [
        Expectation(d / name, f"{name}: lines '<image path relative to {d.name}/> <label 0..{n - 1}>', as NOAH's "
                    "get_vtab1k.py exports them")
        for name in LISTS.values()
    ]
    return out


def _task_folder_hint(root: Path, spec: VtabSpec) -> str:
    """When the data root given is a task folder itself: which root to pass instead."""
    if any((root / name).is_file() for name in LISTS.values()):
        if root.parent.name in PARENTS:
            return f"{root} holds the lists itself: pass the folder that holds {root.parent.name}/, " \
                f"--data-root {root.parent.parent}"
        return f"{root} holds the lists itself: pass the folder that holds it, --data-root {root.parent}"
    return ""


def _bad_path(rel: str) -> str:
    """Why a list's image path is refused ("" when it is a path inside the task folder): string tests, not
    pathlib, as a task lists up to 73,728 images (dSprites' test set)."""
    if rel.startswith(("/", "\\")) or (rel[1:2] == ":" and rel[:1].isalpha()):
        return "is absolute"
    if ".." in rel.replace("\\", "/").split("/"):
        return "leaves the task folder ('..')"
    return ""


def parse_vtab_list(path: Path, task_dir: Path, spec: VtabSpec, classnames: list[str]) -> list[Sample]:
    """The samples a VTAB-1k list names, in its order.

    Each non-blank line is ``<path> <label>``: the path relative to ``task_dir`` (it may hold spaces: the
    label is the last field), the label an integer in 0..n-1 for the task's n classes. ``DataError`` naming
    the file and line for a missing or non-integer label, a label out of range, an absolute path or one
    with ``..``, an image listed twice, and for a list without images."""
    n = len(classnames)
    seen: dict[str, int] = {}
    out: list[Sample] = []
    for lineno, line in _read_lines(path):
        if lineno == 1:
            line = line.lstrip("\ufeff")  # a BOM, as editors on Windows write one
        fields = line.rsplit(maxsplit=1)
        if len(fields) != 2:
            raise DataError(f"{path}:{lineno}: {line!r} has no label; expected '<image path> <label>'")
        rel, raw = fields
        if not (raw.isascii() and raw.isdigit()):
            raise DataError(f"{path}:{lineno}: label {raw!r} is not an integer 0..{n - 1}")
        label = int(raw)
        if label >= n:
            raise DataError(
                f"{path}:{lineno}: label {label} is out of range: {spec.title} has {n} classes (labels 0..{n - 1}, "
                f"{VTAB_FILE.name})"
            )
        why = _bad_path(rel)
        if why:
            raise DataError(f"{path}:{lineno}: image path {rel!r} {why}; paths are relative to {task_dir}")
        key = os.path.normpath(rel)
        if key in seen:
            raise DataError(f"{path}:{lineno}: {rel!r} is already listed at line {seen[key]}")
        seen[key] = lineno
        out.append(Sample(task_dir / path_from_text(rel), label, classnames[label]))
    if not out:
        raise DataError(f"{path} lists no images")
    return out


def _file_ids(samples: list[Sample]) -> dict[tuple[int, int], Path]:
    """(device, inode) of every listed image that exists, to its path: the same file under two names."""
    ids: dict[tuple[int, int], Path] = {}
    for s in samples:
        try:
            st = os.stat(s.path)
        except OSError:
            continue  # missing: `check_dataset` reports it
        ids.setdefault((st.st_dev, st.st_ino), s.path)
    return ids


def refuse_overlap(
    train_file: Path, train: list[Sample], test_file: Path, test: list[Sample],
    ids: dict[int, dict[tuple[int, int], Path]] | None = None,
) -> None:
    """``DataError`` when ``train`` (read from ``train_file``) shares an image with ``test``: the same path,
    or the same file under another name (a link). Images copied under other names are not detected.
    ``ids`` caches `_file_ids` by ``id()`` of a sample list, for a list checked against several."""
    ids = {} if ids is None else ids
    for samples in (train, test):
        if id(samples) not in ids:
            ids[id(samples)] = _file_ids(samples)
    test_paths = {s.path for s in test}
    shared = {s.path for s in train if s.path in test_paths}
    test_ids = ids[id(test)]
    shared |= {path for key, path in ids[id(train)].items() if key in test_ids}
    if shared:
        example = os.path.relpath(min(shared), train_file.parent)
        raise DataError(
            f"{train_file} shares {len(shared)} image(s) with {test_file.name} (e.g. {example}): training on test "
            "images reports a memorised test set, so this split is refused; the lists must be disjoint (the "
            "PEFT-for-CLIP study's PCam reads train800val200 for both)"
        )


def _task_dir(root: Path, spec: VtabSpec) -> Path:
    found = spec.found(root)
    if len(found) > 1:
        warnings.warn(
            f"VTAB-1k task {spec.task}: {len(found)} folders hold its lists ({', '.join(map(str, found))}); "
            f"reading {found[0]}",
            stacklevel=3,
        )
    return spec.data_dir(root)


def _read(root: Path, spec: DatasetSpec, splits: dict[str, str], overlaps: list[tuple[str, str]]) -> dict:
    """The lists ``splits`` maps (split -> list name) read, each pair of ``overlaps`` checked disjoint."""
    assert isinstance(spec, VtabSpec)
    d = _task_dir(root, spec)
    classnames = _unique_classnames(list(spec.classnames), VTAB_FILE)
    lists = {name: parse_vtab_list(d / LISTS[name], d, spec, classnames) for name in dict.fromkeys(splits.values())}
    ids: dict[int, dict[tuple[int, int], Path]] = {}
    for train, test in overlaps:
        refuse_overlap(d / LISTS[train], lists[train], d / LISTS[test], lists[test], ids)
    listed = [s.path for samples in lists.values() for s in samples]
    if not any(os.path.isfile(p) for p in listed[:PROBE_IMAGES]):
        hint = relocated_images_hint(d, [os.path.relpath(p, d) for p in listed])
        if hint:
            raise DataError(f"dataset {spec.name!r}: none of the images its lists name is under {d}; {hint}")
    return {"dir": d, "classnames": classnames, **{split: lists[name] for split, name in splits.items()}}


def read_vtab(root: Path, spec: DatasetSpec, *, split_seed: int = 1) -> DatasetSplits:
    """A VTAB-1k task as its final runs use it: train = train800val200, val = val200 (inside train), test =
    test.txt; refused when train or val shares an image with test (`refuse_overlap`). ``split_seed`` is
    unused: the lists fix every split."""
    r = _read(root, spec, {"train": "train800val200", "val": "val200", "test": "test"},
              [("train800val200", "test"), ("val200", "test")])
    return DatasetSplits(spec.name, r["classnames"], spec.template, r["train"], r["val"], r["test"],
                         r["dir"] / FEWSHOT_DIRNAME)


def read_vtab_tuning(root: Path, spec: DatasetSpec, *, split_seed: int = 1) -> DatasetSplits:
    """A VTAB-1k task as a hyperparameter search uses it: train = train800, val = test = val200 (the split
    a search evaluates); test.txt is not read. Refused when train800 and val200 share an image. Few-shot
    draws are cached apart from the final read's (``split_fewshot_train800``)."""
    r = _read(root, spec, {"train": "train800", "val": "val200", "test": "val200"}, [("train800", "val200")])
    return DatasetSplits(spec.name, r["classnames"], spec.template, r["train"], r["val"], r["test"],
                         r["dir"] / TUNING_FEWSHOT_DIRNAME)


def _vtab_spec(name: str) -> VtabSpec:
    spec = get_spec(name)
    if not isinstance(spec, VtabSpec):
        raise DataError(f"dataset {name!r} is not a VTAB-1k task; the tasks: {', '.join(VTAB_GROUPS)}")
    return spec


def load_vtab_tuning(name: str, root: str | Path) -> DatasetSplits:
    """The train800 / val200 pair of the VTAB-1k task ``name`` (or an alias) under the data root ``root``:
    train = train800, val = test = val200 (`read_vtab_tuning`). The final read is `load_dataset` (train =
    train800val200, test = test.txt). ``DataError`` for a name that is not a VTAB-1k task, a task folder
    that is missing (naming the folders looked at) and anything `parse_vtab_list` refuses."""
    spec = _vtab_spec(name)
    root = _absolute(root)
    if not spec.found(root):
        raise DataError(f"dataset {spec.name!r}: no VTAB-1k task folder under {root}; looked at "
                        f"{', '.join(str(d) for d in spec.candidates(root))}")
    return read_vtab_tuning(root, spec)


def vtab_group(name: str) -> str:
    """The VTAB-1k group of a task's dataset name or alias: "natural", "specialized" or "structured";
    ``DataError`` for a dataset that is not a VTAB-1k task."""
    return _vtab_spec(name).group


def _register() -> dict[str, str]:
    groups: dict[str, str] = {}
    for task, t in _load_tasks().items():
        spec = VtabSpec(
            name=f"vtab-{task}",
            folder=f"{PARENTS[0]}/{t['folders'][0]}",
            template=t["template"],
            reader=read_vtab,
            expected=expect_vtab,
            title=t["title"],
            mirror_invariant=t.get("mirror_invariant", True),
            min_crop_area=t.get("min_crop_area", 0.08),
            family="vtab-1k",
            task=task,
            group=t["group"],
            folders=tuple(t["folders"]),
            classnames=tuple(t["classnames"]),
            tfds=t["tfds"],
        )
        register_dataset(spec)
        for alias in t["aliases"]:
            DATASETS.register_alias(alias, spec.name)
        groups[spec.name] = spec.group
    DATASETS.extend_order(list(groups))
    return groups


# Every task's dataset name and its group, in VTAB's order (natural, specialized, structured): what the
# VTAB tables average over.
VTAB_GROUPS: dict[str, str] = _register()
VTAB_TASKS: tuple[str, ...] = tuple(VTAB_GROUPS)
