"""Readers for every on-disk layout, and the expectations ``check_dataset`` reports for each.

A reader takes the data root and the dataset's spec and returns ``DatasetSplits``; it lists and
parses, it does not open images (``ImageDataset`` does that; ``check_dataset`` counts missing files
and decodes). Anything malformed raises ``DataError`` naming the file and the row or field at fault.
Every text file is read as UTF-8 whatever the locale, and the paths it lists name the files whose
names are those UTF-8 bytes (``path_from_text``); class names taken from folder names are those
names' bytes read as UTF-8 (``text_from_path``), so that "año" is one class under ``LC_ALL=C`` too.
Split files and CSVs are read alike: a UTF-8 BOM is accepted, an image listed twice is refused (it
would be drawn twice into a few-shot set, or sit in train and test), and class names that differ only
in case, underscores or spacing are kept apart with a warning.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import warnings
from collections.abc import Callable
from pathlib import Path

from clipfit.errors import DataError
from clipfit.files import path_from_text, text_from_path

from .registry import DatasetSpec, Expectation
from .samples import DEFAULT_TEMPLATE, DatasetSplits, Sample, clean_classname

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})
SPLITS = ("train", "val", "test")
FEWSHOT_DIRNAME = "split_fewshot"

# imagefolder / CSV without split information: per class, this share of the images (rounded).
SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
# imagefolder / CSV with train and test but no val: this share of each class's train images.
VAL_FROM_TRAIN_FRACTION = 0.125
# ImageNet has no val split of its own (its official val is the test set here): this many train
# images per class, drawn with the split seed, become val and leave train.
IMAGENET_VAL_PER_CLASS = 4


def _short(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, hidden entries skipped), sorted."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / f)
    return found


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _flat_images(folder: Path) -> int:
    """How many image files lie directly in ``folder`` (not in its sub-folders)."""
    if not folder.is_dir():
        return 0
    return sum(
        1
        for p in folder.iterdir()
        if not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )


def _flat_images_error(folder: Path, n: int, expected: str, note: str = "") -> DataError:
    """One line: ``n`` images lie directly in ``folder``, where ``expected`` sub-folders are expected."""
    n_dirs = len([d for d in _subdirs(folder) if d.name != FEWSHOT_DIRNAME])
    return DataError(
        f"{folder} holds {n} image file(s) directly and {n_dirs} sub-folder(s): expected {expected} "
        f"holding its images, so these would belong to no class; move each into its class's folder{note}"
    )


def _class_folder_hint(expected: Path, is_class: Callable[[str], bool], what: str) -> str:
    """Where the class folders (``is_class`` on their names) of ``expected`` are, when ``expected`` holds
    none: one level down (``expected/x/``), one level up (in ``expected``'s parent, or a folder of the
    same name beside that parent) or beside it (a sibling folder, or a sibling's folder of the same
    name); "" if nowhere near."""
    candidates: list[Path] = []
    if expected.is_dir():
        candidates += _subdirs(expected)
    parent = expected.parent
    if parent.is_dir():
        candidates.append(parent)
        # A sibling named like a split (train/ beside val/) is another split, not a misplaced copy.
        siblings = [d for d in _subdirs(parent) if d != expected and d.name not in SPLITS]
        candidates += [d / expected.name for d in siblings] + siblings
        candidates.append(parent.parent / expected.name)  # one level up by name (imagenet/val)
    for c in candidates:
        if c == expected or not c.is_dir():
            continue
        n = sum(1 for d in _subdirs(c) if is_class(text_from_path(d.name)))
        if n:
            return f"found {n} {what} folder(s) in {c} instead: move them to {expected}"
    return ""


# A split file's or list's images are looked for elsewhere when none of this many listed first exists.
PROBE_IMAGES = 20


def relocated_images_hint(base: Path, rels: list[str]) -> str:
    """When none of the first ``PROBE_IMAGES`` of ``rels`` (paths relative to ``base``) exists: where
    they are instead, one folder up, down or beside (the same relative paths), as one line naming that
    folder and how many of them it holds; "" when some exist or they are nowhere near."""
    probe = rels[:PROBE_IMAGES]
    if not probe or any(os.path.isfile(base / path_from_text(r)) for r in probe):
        return ""
    candidates: list[Path] = []
    if base.is_dir():
        candidates += [d for d in _subdirs(base) if d.name != FEWSHOT_DIRNAME]  # one level too deep
    parent = base.parent
    if parent.is_dir():
        candidates.append(parent)  # one level up
        siblings = [d for d in _subdirs(parent) if d != base and d.name != FEWSHOT_DIRNAME]
        candidates += [d / base.name for d in siblings] + siblings  # a nested copy, or a renamed folder
    for c in candidates:
        if c == base or not c.is_dir():
            continue
        if any(os.path.isfile(c / path_from_text(r)) for r in probe):
            n = sum(1 for r in rels if os.path.isfile(c / path_from_text(r)))
            return f"found {n} of its {len(rels)} images under {c} instead: move them to {base}"
    return ""


def _rng(purpose: str, seed: int, key: str) -> random.Random:
    # A string seed is hashed with SHA-512 by random.Random: stable across runs and platforms.
    return random.Random(f"clipfit/{purpose}/{seed}/{key}")


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


def _stratified_split(paths: list[Path], key: str, seed: int) -> dict[str, list[Path]]:
    """One class's images into train/val/test by SPLIT_FRACTIONS; train keeps at least one."""
    n = len(paths)
    n_val, n_test = _round(n * SPLIT_FRACTIONS["val"]), _round(n * SPLIT_FRACTIONS["test"])
    while n - n_val - n_test < 1 and (n_val or n_test):
        if n_val:
            n_val -= 1
        else:
            n_test -= 1
    order = sorted(paths)
    _rng("split", seed, key).shuffle(order)
    return {
        "test": sorted(order[:n_test]),
        "val": sorted(order[n_test : n_test + n_val]),
        "train": sorted(order[n_test + n_val :]),
    }


def _val_from_train(paths: list[Path], key: str, seed: int, n_val: int) -> tuple[list[Path], list[Path]]:
    """Move ``n_val`` (at most all but one) of one class's train images to val; returns (train, val)."""
    n_val = max(0, min(n_val, len(paths) - 1))
    order = sorted(paths)
    _rng("val", seed, key).shuffle(order)
    return sorted(order[n_val:]), sorted(order[:n_val])


def _warn_lookalike_classnames(raw_names: list[str], where: Path) -> None:
    """Warn, naming both and ``where``, of two class names a reader would take for one ("FOREST" and
    "forest", "sea_lake" and "Sea  Lake"): equal once case-folded, underscores read as spaces and
    whitespace collapsed. They stay two classes; the user may have meant one."""
    first: dict[str, str] = {}
    for raw in raw_names:
        key = " ".join(raw.replace("_", " ").split()).casefold()
        if key in first and first[key] != raw:
            warnings.warn(
                f"{where}: class labels {first[key]!r} and {raw!r} differ only in case, underscores or "
                "spacing and are kept as two classes; rename one if they are the same class",
                stacklevel=2,
            )
        first.setdefault(key, raw)


def _unique_classnames(
    raw_names: list[str], where: Path, ids: list[str] | None = None, fix: str = ""
) -> list[str]:
    """The class names prompts use (``clean_classname``), in the order given. Refuses (``DataError``
    naming both classes and ``where``) a name that becomes empty, and two classes that become the same
    name: their prompts would be identical and the later class could never be predicted. ``ids`` names
    each class in the message (``"label 3"``, ``"wnid n01440764, line 5"``); ``fix`` is appended to it.
    Warns of names that differ only in case, underscores or spacing (``_warn_lookalike_classnames``)."""
    cleaned = [clean_classname(r) for r in raw_names]
    seen: dict[str, int] = {}
    for i, (raw, name) in enumerate(zip(raw_names, cleaned)):
        who = f"{raw!r} ({ids[i]})" if ids else repr(raw)
        if not name:
            raise DataError(f"{where}: class name {who} is empty")
        if name in seen:
            j = seen[name]
            first = f"{raw_names[j]!r} ({ids[j]})" if ids else repr(raw_names[j])
            detail = (
                ": their prompts would be identical and the later class could never be predicted; "
                f"give each its own name in {where}{fix}"
                if ids
                else ""
            )
            raise DataError(f"{where}: classes {first} and {who} both become {name!r}{detail}")
        seen[name] = i
    _warn_lookalike_classnames(raw_names, where)
    return cleaned


# --------------------------------------------------------------------------- CoOp split JSON


def split_file_description(spec: DatasetSpec) -> str:
    if spec.prepare is not None:
        where = "written when the task is generated"
    else:
        where = "from the CoOp repository's DATASETS.md"
    return f"split file {spec.split_file}: JSON {{train,val,test: [[relpath,label,classname],...]}}, {where}"


def expect_coop_split(root: Path, spec: DatasetSpec) -> list[Expectation]:
    data_dir = spec.data_dir(root)
    image_dir = data_dir / spec.image_dir
    where = f"{spec.image_dir}/" if spec.image_dir else "the dataset folder"
    split_path = data_dir / str(spec.split_file)
    return [
        Expectation(data_dir, f"dataset folder of {spec.title or spec.name}", "dir"),
        Expectation(split_path, split_file_description(spec)),
        Expectation(
            image_dir,
            f"image folder {where}: the split file's paths are relative to it",
            "dir",
            hint=lambda: _split_images_hint(split_path, image_dir),
        ),
    ]


def _split_images_hint(split_path: Path, image_dir: Path) -> str:
    """``relocated_images_hint`` for a split file's images; "" if the split file does not parse."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, samples = parse_coop_split(split_path, image_dir)
    except DataError:
        return ""
    rels = [os.path.relpath(s.path, image_dir) for split in SPLITS for s in samples[split]]
    return relocated_images_hint(image_dir, rels)


def parse_coop_split(path: Path, image_dir: Path) -> tuple[list[str], dict[str, list[Sample]]]:
    """Parse a CoOp split JSON; returns (class names in label order, samples per split).

    Raises ``DataError`` naming the file and the row (``train[3]``) at fault, including an image listed
    twice; warns of class names that differ only in case, underscores or spacing.
    """
    try:
        # utf-8-sig: editors on Windows save a BOM, which json.load refuses; the CSV reader accepts it too.
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"split file {path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"split file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"split file {path}: top level is {type(data).__name__}, expected an object {{train,val,test}}")
    rows: dict[str, list] = {}
    for split in SPLITS:
        if split not in data:
            raise DataError(f"split file {path}: key {split!r} is missing (has {sorted(map(str, data))})")
        if not isinstance(data[split], list):
            raise DataError(f"split file {path}: {split!r} is {type(data[split]).__name__}, expected a list of rows")
        rows[split] = data[split]

    names: dict[int, tuple[str, str]] = {}  # label -> (raw classname, where first seen)
    listed_at: dict[str, str] = {}  # normalised relpath -> row that lists it
    samples: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    for split in SPLITS:
        for i, row in enumerate(rows[split]):
            at = f"{split}[{i}]"
            ok = (
                isinstance(row, list)
                and len(row) == 3
                and isinstance(row[0], str)
                and row[0] != ""
                and isinstance(row[1], int)
                and not isinstance(row[1], bool)
                and row[1] >= 0
                and isinstance(row[2], str)
                and row[2].strip() != ""
            )
            if not ok:
                raise DataError(
                    f"split file {path}: row {at} is {_short(row)}; expected [relpath, label, classname] "
                    "with a non-negative int label"
                )
            rel, label, raw = row
            key = os.path.normpath(rel)
            if key in listed_at:
                raise DataError(f"split file {path}: row {at} lists {rel!r}, already listed at row {listed_at[key]}")
            listed_at[key] = at
            if label in names and names[label][0] != raw:
                first, first_at = names[label]
                raise DataError(
                    f"split file {path}: label {label} is named {first!r} at {first_at} and {raw!r} at {at}"
                )
            names.setdefault(label, (raw, at))
            samples[split].append((rel, label))  # type: ignore[arg-type]  # turned into Samples below
    if not names:
        raise DataError(f"split file {path} has no rows")
    for label in range(max(names) + 1):
        if label not in names:
            raise DataError(
                f"split file {path}: no row has label {label} (labels run 0..{max(names)}); "
                "labels must be 0..n-1 without gaps"
            )
    classnames = _unique_classnames(
        [names[i][0] for i in range(len(names))],
        path,
        [f"label {i}, first at {names[i][1]}" for i in range(len(names))],
    )
    out = {
        split: [Sample(image_dir / path_from_text(rel), label, classnames[label]) for rel, label in samples[split]]  # type: ignore[misc]
        for split in SPLITS
    }
    return classnames, out


def read_coop_split(root: Path, spec: DatasetSpec, *, split_seed: int = 1) -> DatasetSplits:
    data_dir = spec.data_dir(root)
    path = data_dir / str(spec.split_file)
    if not path.is_file():
        hint = misplaced_hint(root, spec, path)
        raise DataError(f"dataset {spec.name!r}: {split_file_description(spec)} is missing at {path}{hint}")
    image_dir = data_dir / spec.image_dir
    classnames, s = parse_coop_split(path, image_dir)
    listed = [x.path for split in SPLITS for x in s[split]]
    hint = ""
    if listed and not any(os.path.isfile(p) for p in listed[:PROBE_IMAGES]):  # cheap first: nothing to look for
        hint = relocated_images_hint(image_dir, [os.path.relpath(p, image_dir) for p in listed])
    if hint:
        raise DataError(f"dataset {spec.name!r}: none of the images {path.name} lists is under {image_dir}; {hint}")
    return DatasetSplits(
        spec.name, classnames, spec.template, s["train"], s["val"], s["test"], data_dir / FEWSHOT_DIRNAME
    )


def misplaced_hint(root: Path, spec: DatasetSpec, expected: Path) -> str:
    """'; found at X, move it to Y' when a missing file sits in an obvious wrong place."""
    name = expected.name
    data_dir = spec.data_dir(root)
    candidates = [root / name, data_dir / spec.image_dir / name]
    for parent in (root, data_dir):
        if parent.is_dir():
            candidates += [d / name for d in _subdirs(parent)]
    for c in candidates:
        if c != expected and c.is_file():
            return f"; found {c} instead: move it to {expected}"
    return ""


# --------------------------------------------------------------------------- FGVC-Aircraft


def expect_fgvc(root: Path, spec: DatasetSpec) -> list[Expectation]:
    d = spec.data_dir(root)
    out = [
        Expectation(d, "dataset folder of FGVC-Aircraft (its data/ folder, renamed)", "dir"),
        Expectation(d / "images", "image folder images/: <imageid>.jpg", "dir", hint=lambda: _fgvc_images_hint(d)),
        Expectation(d / "variants.txt", "variants.txt: one variant name per line, line order gives the labels"),
    ]
    out += [
        Expectation(
            d / f"images_variant_{s}.txt",
            f"images_variant_{s}.txt: lines '<imageid> <variant name>', from FGVC-Aircraft's data/ folder",
        )
        for s in SPLITS
    ]
    return out


def _fgvc_images_hint(d: Path) -> str:
    """``relocated_images_hint`` for the images FGVC-Aircraft's lists name; "" if none can be read."""
    rels = []
    for split in SPLITS:
        try:
            rels += [f"{line.partition(' ')[0]}.jpg" for _, line in _read_lines(d / f"images_variant_{split}.txt")]
        except DataError:
            pass
    return relocated_images_hint(d / "images", rels)


def _read_lines(path: Path) -> list[tuple[int, str]]:
    try:
        with open(path, encoding="utf-8") as f:
            return [(i, line.strip()) for i, line in enumerate(f, 1) if line.strip()]
    except FileNotFoundError:
        raise DataError(f"{path} not found") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text: {exc}") from None


def read_fgvc(root: Path, spec: DatasetSpec, *, split_seed: int = 1) -> DatasetSplits:
    d = spec.data_dir(root)
    variants_file = d / "variants.txt"
    variants = [line for _, line in _read_lines(variants_file)]
    if not variants:
        raise DataError(f"{variants_file} lists no variants")
    dup = {v for v in variants if variants.count(v) > 1}
    if dup:
        raise DataError(f"{variants_file}: variant {sorted(dup)[0]!r} is listed twice")
    label_of = {v: i for i, v in enumerate(variants)}
    classnames = _unique_classnames(variants, variants_file)
    out: dict[str, list[Sample]] = {}
    for split in SPLITS:
        f = d / f"images_variant_{split}.txt"
        samples = []
        for lineno, line in _read_lines(f):
            image_id, _, variant = line.partition(" ")
            variant = variant.strip()
            if not variant:
                raise DataError(f"{f}:{lineno}: {line!r} is not '<imageid> <variant name>'")
            if variant not in label_of:
                raise DataError(f"{f}:{lineno}: variant {variant!r} is not in {variants_file}")
            label = label_of[variant]
            samples.append(Sample(d / "images" / path_from_text(f"{image_id}.jpg"), label, classnames[label]))
        out[split] = samples
    image_dir = d / "images"
    listed = [x.path for split in SPLITS for x in out[split]]
    hint = ""
    if listed and not any(os.path.isfile(p) for p in listed[:PROBE_IMAGES]):
        hint = relocated_images_hint(image_dir, [p.name for p in listed])
    if hint:
        raise DataError(f"dataset {spec.name!r}: none of the images its lists name is under {image_dir}; {hint}")
    return DatasetSplits(
        spec.name, classnames, spec.template, out["train"], out["val"], out["test"], d / FEWSHOT_DIRNAME
    )


# --------------------------------------------------------------------------- ImageNet and variants

IMAGENET_CLASSNAMES = "imagenet/classnames.txt"


def _classnames_expectation(root: Path) -> Expectation:
    return Expectation(
        root / IMAGENET_CLASSNAMES,
        "classnames.txt: lines '<wnid> <class name>' in label order, from the CoOp repository's DATASETS.md",
    )


# What a refusal of two ImageNet classes with one name adds: how to name them apart.
_IMAGENET_NAMES_FIX = (
    " (CoOp's classnames.txt, whose names are CLIP's, names ImageNet's look-alike classes apart: "
    "n02012849 'crane bird' and n03126707 'construction crane', n03710637 'maillot' and "
    "n03710721 'one-piece bathing suit')"
)


def read_imagenet_classnames(root: Path) -> tuple[list[str], list[str]]:
    """(wnids, class names) from ``<root>/imagenet/classnames.txt``, in label order.

    Lines are ``<wnid> <class name>`` (CoOp's file). A name holding commas is taken for a WordNet
    synonym list (``n01440764 tench, Tinca tinca``, as ``LOC_synset_mapping.txt`` has it): its first
    name is used, with one warning. Two classes with the same name are refused (``_unique_classnames``).
    """
    path = root / IMAGENET_CLASSNAMES
    wnids: list[str] = []
    raw: list[str] = []
    ids: list[str] = []
    synonym_example = ""
    for lineno, line in _read_lines(path):
        wnid, _, name = line.partition(" ")
        name = name.strip()
        if not name:
            raise DataError(f"{path}:{lineno}: {line!r} is not '<wnid> <class name>'")
        if wnid in wnids:
            raise DataError(f"{path}:{lineno}: wnid {wnid!r} is listed twice")
        if "," in name:
            first = name.split(",")[0].strip()
            if not first:
                raise DataError(f"{path}:{lineno}: {line!r} is not '<wnid> <class name>'")
            synonym_example = synonym_example or f"{wnid} {name!r} -> {first!r}"
            name = first
        wnids.append(wnid)
        raw.append(name)
        ids.append(f"wnid {wnid}, line {lineno}")
    if not wnids:
        raise DataError(f"{path} lists no classes")
    if synonym_example:
        warnings.warn(
            f"{path}: class names are WordNet synonym lists; taking the first name of each "
            f"(e.g. {synonym_example}), as CoOp's classnames.txt names them",
            stacklevel=2,
        )
    return wnids, _unique_classnames(raw, path, ids, _IMAGENET_NAMES_FIX)


def _is_wnid_like(name: str) -> bool:
    return len(name) == 9 and name[0] == "n" and name[1:].isdigit()


# What a refusal of flat ImageNet images adds: the official val archive is flat.
_IMAGENET_FLAT_NOTE = (
    " (ImageNet's official validation archive has no class folders: sort its images into <wnid>/ "
    "folders by their validation labels, as CoOp's DATASETS.md lays it out)"
)


def _wnid_folders(folder: Path, wnids: list[str], classnames_file: Path, flat_note: str = "") -> dict[str, list[Path]]:
    """Images of each wnid sub-folder of ``folder`` (keyed by the folder's name as text); every folder
    must be a listed wnid. Images lying directly in ``folder`` are refused, and class folders one level
    off are pointed at (``_class_folder_hint``)."""
    known = set(wnids)

    def is_class(name: str) -> bool:
        return name in known

    if not folder.is_dir():
        hint = _class_folder_hint(folder, is_class, "<wnid>")
        raise DataError(f"{folder} not found" + (f"; {hint}" if hint else ""))
    subs = _subdirs(folder)
    if not any(text_from_path(sub.name) in known for sub in subs):
        hint = _class_folder_hint(folder, is_class, "<wnid>")
        if hint:
            raise DataError(f"{folder} holds no <wnid>/ class folder; {hint}")
    n_flat = _flat_images(folder)
    if n_flat:
        raise _flat_images_error(folder, n_flat, "one <wnid>/ folder per class", flat_note)
    found: dict[str, list[Path]] = {}
    for sub in subs:
        wnid = text_from_path(sub.name)
        if wnid not in known:
            raise DataError(f"{sub}: folder {wnid!r} is not a wnid listed in {classnames_file}")
        found[wnid] = list_images(sub)
    return found


def expect_imagenet(root: Path, spec: DatasetSpec) -> list[Expectation]:
    d = spec.data_dir(root)
    return [
        Expectation(d, "dataset folder of ImageNet", "dir"),
        _classnames_expectation(root),
        Expectation(
            d / "images" / "train",
            "ImageNet train images, one <wnid>/ folder per class",
            "dir",
            hint=lambda: _class_folder_hint(d / "images" / "train", _is_wnid_like, "<wnid>"),
        ),
        Expectation(
            d / "images" / "val",
            "ImageNet val images (the test set here), one <wnid>/ folder per class",
            "dir",
            hint=lambda: _class_folder_hint(d / "images" / "val", _is_wnid_like, "<wnid>"),
        ),
    ]


def read_imagenet(root: Path, spec: DatasetSpec, *, split_seed: int = 1) -> DatasetSplits:
    d = spec.data_dir(root)
    wnids, classnames = read_imagenet_classnames(root)
    cfile = root / IMAGENET_CLASSNAMES
    train_imgs = _wnid_folders(d / "images" / "train", wnids, cfile)
    test_imgs = _wnid_folders(d / "images" / "val", wnids, cfile, _IMAGENET_FLAT_NOTE)
    train, val, test = [], [], []
    for label, (wnid, name) in enumerate(zip(wnids, classnames)):
        if wnid not in train_imgs:
            raise DataError(f"{d / 'images' / 'train' / wnid} not found (class {name!r} of {cfile})")
        tr, va = _val_from_train(train_imgs[wnid], wnid, split_seed, IMAGENET_VAL_PER_CLASS)
        train += [Sample(p, label, name) for p in tr]
        val += [Sample(p, label, name) for p in va]
        test += [Sample(p, label, name) for p in test_imgs.get(wnid, [])]
    return DatasetSplits(spec.name, classnames, spec.template, train, val, test, d / FEWSHOT_DIRNAME)


def expect_imagenet_v2(root: Path, spec: DatasetSpec) -> list[Expectation]:
    d = spec.data_dir(root)
    return [
        Expectation(
            d,
            "ImageNet-V2 matched-frequency test images, folders 0..999 named by label",
            "dir",
            hint=lambda: _class_folder_hint(d, str.isdigit, "<label>"),
        ),
        _classnames_expectation(root),
    ]


def read_imagenet_v2(root: Path, spec: DatasetSpec, *, split_seed: int = 1) -> DatasetSplits:
    d = spec.data_dir(root)
    _, classnames = read_imagenet_classnames(root)

    def is_class(name: str) -> bool:
        return name.isdigit() and int(name) < len(classnames)

    if not d.is_dir():
        hint = _class_folder_hint(d, is_class, "<label>")
        raise DataError(f"{d} not found" + (f"; {hint}" if hint else ""))
    subs = _subdirs(d)
    if not any(is_class(sub.name) for sub in subs):
        hint = _class_folder_hint(d, is_class, "<label>")
        if hint:
            raise DataError(f"{d} holds no <label>/ class folder; {hint}")
    n_flat = _flat_images(d)
    if n_flat:
        raise _flat_images_error(d, n_flat, "one folder per class named by its label 0..999")
    test = []
    for sub in subs:
        if not sub.name.isdigit() or int(sub.name) >= len(classnames):
            raise DataError(
                f"{sub}: folder name must be a label 0..{len(classnames) - 1} "
                f"({root / IMAGENET_CLASSNAMES} has {len(classnames)} classes)"
            )
        label = int(sub.name)
        test += [Sample(p, label, classnames[label]) for p in list_images(sub)]
    test.sort(key=lambda s: (s.label, s.path))
    return DatasetSplits(spec.name, classnames, spec.template, [], [], test, None)


def expect_imagenet_sketch(root: Path, spec: DatasetSpec) -> list[Expectation]:
    d = spec.data_dir(root)
    return [
        Expectation(
            d,
            "ImageNet-Sketch test images, one <wnid>/ folder per class",
            "dir",
            hint=lambda: _class_folder_hint(d, _is_wnid_like, "<wnid>"),
        ),
        _classnames_expectation(root),
    ]


def read_imagenet_sketch(root: Path, spec: DatasetSpec, *, split_seed: int = 1) -> DatasetSplits:
    d = spec.data_dir(root)
    wnids, classnames = read_imagenet_classnames(root)
    found = _wnid_folders(d, wnids, root / IMAGENET_CLASSNAMES)
    test = [Sample(p, label, classnames[label]) for label, w in enumerate(wnids) for p in found.get(w, [])]
    return DatasetSplits(spec.name, classnames, spec.template, [], [], test, None)


def expect_imagenet_subset(root: Path, spec: DatasetSpec) -> list[Expectation]:
    d = spec.data_dir(root)
    return [
        Expectation(
            d,
            f"{spec.title} test images, one <wnid>/ folder per class of its ImageNet subset",
            "dir",
            hint=lambda: _class_folder_hint(d, _is_wnid_like, "<wnid>"),
        ),
        _classnames_expectation(root),
    ]


def read_imagenet_subset(root: Path, spec: DatasetSpec, *, split_seed: int = 1) -> DatasetSplits:
    """ImageNet-A or ImageNet-R as the CoOp family reads them (CoOp `datasets/imagenet_a.py`,
    `imagenet_r.py`): the wnid folders present (200 of ImageNet's 1,000) are the classes, labelled 0.. in
    sorted folder order, named as ImageNet's ``classnames.txt`` names them; a ``README.txt`` beside the
    folders is ignored. Every image is a test image."""
    d = spec.data_dir(root)
    wnids, classnames = read_imagenet_classnames(root)
    name_of = dict(zip(wnids, classnames))
    found = _wnid_folders(d, wnids, root / IMAGENET_CLASSNAMES)
    present = sorted(w for w in found if found[w])
    if not present:
        raise DataError(f"{d}: no <wnid>/ folder holds an image")
    test = [Sample(p, label, name_of[w]) for label, w in enumerate(present) for p in found[w]]
    return DatasetSplits(spec.name, [name_of[w] for w in present], spec.template, [], [], test, None)


# --------------------------------------------------------------------------- generic formats


def _assemble(
    name: str,
    raw_classes: list[str],
    per_split: dict[str, dict[str, list[Path]]],
    where: Path,
    split_seed: int,
    fewshot_dir: Path,
) -> DatasetSplits:
    """Labels from sorted class names; fills a missing val from train."""
    classnames = _unique_classnames(raw_classes, where)
    label_of = {raw: i for i, raw in enumerate(raw_classes)}
    if not per_split["val"]:
        for raw in raw_classes:
            imgs = per_split["train"].get(raw, [])
            n_val = _round(len(imgs) * VAL_FROM_TRAIN_FRACTION)
            per_split["train"][raw], per_split["val"][raw] = _val_from_train(imgs, raw, split_seed, n_val)
    out = {
        split: [
            Sample(p, label_of[raw], classnames[label_of[raw]])
            for raw in raw_classes
            for p in per_split[split].get(raw, [])
        ]
        for split in SPLITS
    }
    return DatasetSplits(name, classnames, DEFAULT_TEMPLATE, out["train"], out["val"], out["test"], fewshot_dir)


def expect_imagefolder(root: Path, spec: DatasetSpec) -> list[Expectation]:
    return [
        Expectation(
            root,
            "image folder: one sub-folder per class, or train/ test/ (and optionally val/) "
            "sub-folders each with one sub-folder per class",
            "dir",
        )
    ]


def _imagefolder_classes(folder: Path, data_root: Path, exclude: frozenset[str] = frozenset()) -> list[Path]:
    """The class folders of ``folder`` (an image folder's root or one of its split folders). Refuses
    images lying directly in it, and a single folder whose sub-folders look like the classes (a copy
    nested one level too deep)."""
    classes = [p for p in _subdirs(folder) if p.name not in exclude]
    n_flat = _flat_images(folder)
    if n_flat and not classes:
        raise DataError(
            f"image folder {folder} has no class sub-folders; it holds {n_flat} image file(s) directly: "
            "expected one sub-folder per class holding its images"
        )
    if n_flat:
        raise _flat_images_error(folder, n_flat, "one sub-folder per class")
    # (at the root, a lone train/ or test/ is a split folder: the split check names what is missing)
    if len(classes) == 1 and not (folder == data_root and classes[0].name in SPLITS) and not _flat_images(classes[0]):
        inner = [d for d in _subdirs(classes[0]) if d.name != FEWSHOT_DIRNAME]
        if inner and any(list_images(d) for d in inner):
            where = f"pass --data-root {classes[0]}" if folder == data_root else f"move them up to {folder}"
            raise DataError(
                f"image folder {folder} holds one folder, {classes[0].name}, with {len(inner)} sub-folder(s) "
                f"and no image of its own: the class folders look one level too deep; {where}"
            )
    return classes


def read_imagefolder(root: Path, spec: DatasetSpec, *, split_seed: int = 1) -> DatasetSplits:
    if not root.is_dir():
        raise DataError(f"image folder {root} not found")
    subdirs = _imagefolder_classes(root, root, frozenset({FEWSHOT_DIRNAME}))
    present = {p.name for p in subdirs} & set(SPLITS)
    per_split: dict[str, dict[str, list[Path]]] = {s: {} for s in SPLITS}
    if present:
        missing = {"train", "test"} - present
        if missing:
            raise DataError(
                f"image folder {root} has {sorted(present)} sub-folder(s) but no {sorted(missing)}: "
                "with split sub-folders, train/ and test/ are required (val/ is optional)"
            )
        for split in sorted(present):
            for cls in _imagefolder_classes(root / split, root):
                per_split[split][text_from_path(cls.name)] = list_images(cls)
        raw_classes = sorted(per_split["train"])
        for split in ("val", "test"):
            for cls in sorted(per_split[split]):
                if cls not in per_split["train"]:
                    raise DataError(f"{root / split / cls}: class {cls!r} has no folder in {root / 'train'}")
    else:
        folder_of = {text_from_path(p.name): p for p in subdirs}
        raw_classes = sorted(folder_of)
        for cls in raw_classes:
            for split, paths in _stratified_split(list_images(folder_of[cls]), cls, split_seed).items():
                per_split[split][cls] = paths
    if not raw_classes:
        raise DataError(f"image folder {root} has no class sub-folders")
    top = root / "train" if present else root
    for cls in raw_classes:
        if not per_split["train"][cls] and not per_split["test"].get(cls) and not per_split["val"].get(cls):
            raise DataError(f"{top / cls}: class folder has no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return _assemble(root.name, raw_classes, per_split, root, split_seed, root / FEWSHOT_DIRNAME)


def expect_csv(root: Path, spec: DatasetSpec) -> list[Expectation]:
    return [
        Expectation(
            root,
            "CSV file with header 'path,label' or 'path,label,split': paths relative to the CSV's folder or "
            "absolute, label a class name, split one of train/val/test",
        )
    ]


def read_csv(root: Path, spec: DatasetSpec, *, split_seed: int = 1) -> DatasetSplits:
    path = root
    if not path.is_file():
        raise DataError(f"CSV file {path} not found")
    base = path.parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"CSV file {path} cannot be parsed: {exc}") from None
    if not rows:
        raise DataError(f"CSV file {path} is empty; expected a header 'path,label[,split]'")
    header = [h.strip().lower() for h in rows[0]]
    if header not in (["path", "label"], ["path", "label", "split"]):
        raise DataError(f"CSV file {path}: header is {rows[0]}, expected 'path,label' or 'path,label,split'")
    has_split = len(header) == 3
    seen: dict[Path, int] = {}
    by_class: dict[str, list[Path]] = {}
    per_split: dict[str, dict[str, list[Path]]] = {s: {} for s in SPLITS}
    first_line: dict[str, int] = {}
    for lineno, row in enumerate(rows[1:], 2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise DataError(f"CSV file {path}:{lineno}: {row} has {len(row)} fields, expected {len(header)}")
        rel, label = row[0].strip(), row[1].strip()
        if not rel or not label:
            raise DataError(f"CSV file {path}:{lineno}: empty path or label in {row}")
        p = Path(os.path.abspath(base / os.path.expanduser(path_from_text(rel))))
        if p in seen:
            raise DataError(f"CSV file {path}:{lineno}: {rel!r} is already listed at line {seen[p]}")
        seen[p] = lineno
        if has_split:
            split = row[2].strip().lower()
            if split not in SPLITS:
                raise DataError(f"CSV file {path}:{lineno}: split {row[2]!r} is not one of train/val/test")
            if split != "train":
                first_line.setdefault(label, lineno)
            per_split[split].setdefault(label, []).append(p)
        else:
            by_class.setdefault(label, []).append(p)
    if has_split:
        if not per_split["train"]:
            raise DataError(f"CSV file {path}: no row has split 'train'")
        if not per_split["test"]:
            raise DataError(f"CSV file {path}: no row has split 'test'")
        for split in ("val", "test"):
            for label in per_split[split]:
                if label not in per_split["train"]:
                    raise DataError(
                        f"CSV file {path}:{first_line[label]}: class {label!r} has no train row "
                        "(unknown class; every val/test class needs train images)"
                    )
        raw_classes = sorted(per_split["train"])
    else:
        if not by_class:
            raise DataError(f"CSV file {path} has a header but no rows")
        raw_classes = sorted(by_class)
        for label in raw_classes:
            for split, paths in _stratified_split(by_class[label], label, split_seed).items():
                per_split[split][label] = paths
    return _assemble(
        path.stem, raw_classes, per_split, path, split_seed, base / f"{FEWSHOT_DIRNAME}_{path.stem}"
    )
