"""VTAB-1k's image lists exported from TensorFlow Datasets-prepared folders, without TensorFlow.

``export_vtab(tfds_dir, task, out_root)`` reads a TFDS data_dir (``<tfds_dir>/<builder>/<config?>/<version>/``
holding ``dataset_info.json`` and the shards ``<builder>-<split>.tfrecord-0000N-of-0000M``) in pure Python
and writes the task in the list layout `clipfit.data.vtab` reads (``<out>/vtab-1k/<task folder>/{train800,
val200,train800val200,test}.txt`` and ``images/<list>/<index>.<png|jpg>``), as NOAH's
``data/vtab-source/get_vtab1k.py`` (ZhangYuanhan-AI/NOAH) does with TensorFlow.

What was verified against what:

- TFRecord framing (uint64 LE length, uint32 masked CRC32C of the length bytes, the data, uint32 masked
  CRC32C of the data; mask ``((c >> 15) | (c << 17)) + 0xa282ead8``): TensorFlow's record format; both CRCs
  are checked, and a bad one is refused naming the file and record index. The table-driven CRC32C below is
  tested against the standard check value (CRC32C("123456789") = 0xE3069283) and, in the tests, against
  records written with an independent bitwise CRC.
- ``tf.train.Example`` wire format (Example.features = 1, Features.feature = 1 (map<string, Feature>),
  Feature bytes_list = 1 / float_list = 2 / int64_list = 3, each ``repeated value = 1``, packed or not):
  TensorFlow's ``example.proto`` / ``feature.proto``; parsed by the minimal reader below (no protobuf).
- Splits and labels: google-research/task_adaptation ``task_adaptation/data/*.py`` at commit d7630d3
  (2021-03-22), the code NOAH's export calls (its ``dataset_config`` fixes the options: cifar
  ``num_classes=100``, kitti ``closest_vehicle_distance``, clevr ``count_all`` / ``closest_object_distance``,
  dsprites ``label_x_position`` / ``label_orientation`` with ``num_classes=16``, smallnorb ``label_azimuth``
  / ``label_elevation``, retinopathy ``btgraham-300``). Each task's VTAB train / val / test are written
  below as data (`TASKS`), with percentages resolved as that code does (``P * n // 100``); VTAB-1k's
  ``train800`` = ``train[:800]`` and ``val200`` = the first 200 of VTAB's val, as there.
- Order: a slice such as ``train[:800]`` is taken over the split's shards concatenated in shard order, records
  in file order (TFDS resolves slices to per-shard skip/take over that order). TFDS's own *read* order with
  ``shuffle_files=False`` interleaves shards in blocks of 16 (its "TFDS and determinism" guide shows ids 0..15
  then 1251..), so the set of examples in each list is TFDS's, while the line order of a list that spans
  several shards may differ from NOAH's: each list holds VTAB's images, but a seeded shuffle or few-shot
  draw over it is not bit-comparable with one over NOAH's lists. Not verified against a real TFDS folder
  in this repository: the tests write the layout.
- Images are written as TFDS stored them (the encoded PNG or JPEG bytes, by their magic bytes), not
  re-encoded as NOAH's JPEGs, except dSprites: TFDS stores its 0/1 pixels, which VTAB multiplies by 255
  (``dsprites.py`` preprocess, after tiling it to 3 channels), so its PNGs are rewritten as RGB 0/255 pixels.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipfit.errors import DataError

from .images import decode_image_bytes
from .vtab import LISTS, PARENTS, VtabSpec, _vtab_spec

SOURCE = "google-research/task_adaptation task_adaptation/data/*.py (commit d7630d3)"

# --- CRC32C (Castagnoli, reflected polynomial 0x82F63B78), table-driven ---------------------------------
_POLY = 0x82F63B78
_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ _POLY if _c & 1 else _c >> 1
    _TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_records(path: Path, *, check_data_crc: bool = True) -> Iterator[bytes]:
    """The records of one TFRecord file, in file order; ``DataError`` naming the file and record index for a
    truncated record or a CRC that does not match."""
    with open(path, "rb") as f:
        index = 0
        while True:
            head = f.read(12)
            if not head:
                return
            if len(head) < 12:
                raise DataError(f"{path}: record {index} is truncated (its header has {len(head)} of 12 bytes)")
            length, length_crc = struct.unpack("<QI", head)
            if masked_crc(head[:8]) != length_crc:
                raise DataError(f"{path}: record {index}: the CRC32C of its length does not match (a corrupt file)")
            data = f.read(length)
            tail = f.read(4)
            if len(data) < length or len(tail) < 4:
                raise DataError(f"{path}: record {index} is truncated ({len(data)} of {length} bytes)")
            if check_data_crc and masked_crc(data) != struct.unpack("<I", tail)[0]:
                raise DataError(f"{path}: record {index}: the CRC32C of its data does not match (a corrupt file)")
            yield data
            index += 1


# --- tf.train.Example, minimal protobuf wire-format reader ---------------------------------------------
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of a message: an int for varints, bytes for the others."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"wire type {wire} is not used by tf.train.Example")
        if pos > len(buf):
            raise ValueError("truncated field")
        yield number, wire, value


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _feature(buf: bytes) -> list:
    out: list = []
    for kind, _, body in _fields(buf):  # a Feature: one of bytes_list (1), float_list (2), int64_list (3)
        for number, wire, value in _fields(body):
            if number != 1:
                continue
            if kind == 1 and wire == 2:
                out.append(bytes(value))
            elif kind == 2 and wire == 2:  # packed floats
                out.extend(struct.unpack(f"<{len(value) // 4}f", value))
            elif kind == 2 and wire == 5:
                out.append(struct.unpack("<f", value)[0])
            elif kind == 3 and wire == 2:  # packed varints
                pos = 0
                while pos < len(value):
                    v, pos = _varint(value, pos)
                    out.append(_signed64(v))
            elif kind == 3 and wire == 0:
                out.append(_signed64(value))
            else:
                raise ValueError(f"Feature field {kind} with wire type {wire} is not a tf.train.Feature")
    return out


def parse_example(buf: bytes) -> dict[str, list]:
    """A serialised ``tf.train.Example`` as {feature key: list of values (bytes, float or int)}."""
    out: dict[str, list] = {}
    for number, _, features in _fields(buf):
        if number != 1:
            continue
        for fnumber, _, entry in _fields(features):
            if fnumber != 1:
                continue
            key, value = "", b""
            for enumber, _, v in _fields(entry):
                if enumber == 1:
                    key = bytes(v).decode("utf-8")
                elif enumber == 2:
                    value = v
            out[key] = _feature(value)
    return out


# --- the tasks, as data ------------------------------------------------------------------------------------
# A slice bound: None (the split's end), or a tuple of percentages each resolved as P * n // 100 and summed
# (task_adaptation's train_count + val_count), plus an absolute offset.
Bound = tuple[tuple[int, ...], int] | None


@dataclass(frozen=True)
class Slice:
    split: str
    start: Bound = None  # None: 0
    stop: Bound = None  # None: the split's end

    def resolve(self, counts: dict[str, int]) -> tuple[int, int]:
        n = counts[self.split]

        def at(b: Bound, default: int) -> int:
            return default if b is None else sum(p * n // 100 for p in b[0]) + b[1]

        return at(self.start, 0), at(self.stop, n)


def _pct(*p: int) -> Bound:
    return (p, 0)


def _label(key: str) -> Callable[[dict], int]:
    return lambda ex: _one(ex, key)


def _one(ex: dict, key: str) -> int:
    v = ex[key]
    if len(v) != 1:
        raise ValueError(f"feature {key!r} has {len(v)} values, expected 1")
    return int(v[0])


def _bin(thresholds: tuple[float, ...], value: float) -> int:
    # task_adaptation: label = reduce_max(where(thrs - value < 0)), the last threshold below the value.
    # Every threshold used is exact in float32, so comparing in Python floats gives TF's float32 answer.
    below = [i for i, t in enumerate(thresholds) if t < value]
    if not below:
        raise ValueError(f"value {value} is not above the first threshold {thresholds[0]}")
    return below[-1]


def _clevr_count(ex: dict) -> int:  # clevr.py _count_preprocess_fn: tf.size(objects/size) - 3
    return len(ex["objects/size"]) - 3


def _clevr_dist(ex: dict) -> int:  # clevr.py _closest_object_preprocess_fn: min pixel_coords[:, 2], binned
    z = ex["objects/pixel_coords"][2::3]
    return _bin((0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0), min(z))


def _kitti_vehicle(ex: dict) -> int:  # kitti.py _closest_vehicle_distance_pp: type < 3 (Car, Van, Truck)
    z = ex["objects/location"][2::3]
    types = ex["objects/type"]
    if len(z) != len(types):
        raise ValueError(f"objects/location holds {len(z)} objects, objects/type {len(types)}")
    dist = min([zi for zi, t in zip(z, types, strict=True) if t < 3] + [1000.0])
    return _bin((-100.0, 8.0, 20.0, 999.0), dist)


def _dsprites_x(ex: dict) -> int:  # dsprites.py: floordiv(value, 32 / 16 classes)
    return _one(ex, "label_x_position") // 2


def _dsprites_ori(ex: dict) -> int:  # dsprites.py: floordiv(value, 40 / 16 = 2.5) = 2v // 5, exact in float32
    return 2 * _one(ex, "label_orientation") // 5


@dataclass(frozen=True)
class TfdsTask:
    builder: str  # "<name>" or "<name>/<config>"
    version: str  # a version prefix: "3." for 3.*.*, "2.0.1" exact
    train: Slice  # VTAB's "train" split
    val: Slice  # VTAB's "val" split
    test: Slice  # VTAB's "test" split
    label: Callable[[dict], int]
    label_keys: tuple[str, ...]
    source: str  # the task_adaptation file
    rescale_01: bool = False  # dSprites: 0/1 pixels written as 0/255


def _percent(builder, version, p, source, label=None, keys=("label",), test="test"):
    return TfdsTask(builder, version, Slice("train", None, _pct(p)), Slice("train", _pct(p)), Slice(test),
                    label or _label("label"), keys, source)


def _official(builder, version, source, label=None, keys=("label",)):
    return TfdsTask(builder, version, Slice("train"), Slice("validation"), Slice("test"),
                    label or _label("label"), keys, source)


def _three_way(builder, version, p_train, p_val, source, label=None, keys=("label",), rescale=False):
    return TfdsTask(builder, version, Slice("train", None, _pct(p_train)),
                    Slice("train", _pct(p_train), _pct(p_train, p_val)), Slice("train", _pct(p_train, p_val)),
                    label or _label("label"), keys, source, rescale)


def _norb(key):
    return TfdsTask("smallnorb", "2.", Slice("train"), Slice("test", None, _pct(50)), Slice("test", _pct(50)),
                    _label(key), (key,), "smallnorb.py (VAL_SPLIT_PERCENT = 50: val = test[:50%])")


# clipfit's task name (vtab1k.json) -> how VTAB builds it from TFDS.
TASKS: dict[str, TfdsTask] = {
    "cifar100": _percent("cifar100", "3.", 90, "cifar.py (TRAIN_SPLIT_PERCENT = 90)"),
    "caltech101": _percent("caltech101", "3.0.1", 90, "caltech.py (_TRAIN_SPLIT_PERCENT = 90; caltech101:3.0.1)"),
    "dtd": _official("dtd", "3.", "dtd.py"),
    "oxford_flowers102": _official("oxford_flowers102", "2.", "oxford_flowers102.py (train_split_percent None)"),
    "oxford_iiit_pet": _percent("oxford_iiit_pet", "3.", 80, "oxford_iiit_pet.py (TRAIN_SPLIT_PERCENT = 80)"),
    "svhn": _percent("svhn_cropped", "3.", 90, "svhn.py (TRAIN_SPLIT_PERCENT = 90)"),
    "sun397": _official("sun397/tfds", "4.", "sun397.py (config 'tfds')"),
    "patch_camelyon": _official("patch_camelyon", "2.", "patch_camelyon.py"),
    "eurosat": _three_way("eurosat/rgb", "2.", 60, 20, "eurosat.py (60 / 20 / 20 of train)"),
    "resisc45": _three_way("resisc45", "3.", 60, 20, "resisc45.py (60 / 20 / 20 of train)"),
    "diabetic_retinopathy": _official("diabetic_retinopathy_detection/btgraham-300", "3.",
                                      "diabetic_retinopathy.py (config 'btgraham-300')"),
    "clevr_count": _percent("clevr", "3.", 90, "clevr.py (count_all; test = TFDS validation)", _clevr_count,
                            ("objects/size",), test="validation"),
    "clevr_dist": _percent("clevr", "3.", 90, "clevr.py (closest_object_distance; test = TFDS validation)",
                           _clevr_dist, ("objects/pixel_coords",), test="validation"),
    "dmlab": _official("dmlab", "2.0.1", "dmlab.py"),
    # task_adaptation pins kitti:3.1.0; the PEFT-for-CLIP study prepares kitti:3.*: any 3.x is accepted.
    "kitti": _official("kitti", "3.", "kitti.py (closest_vehicle_distance)", _kitti_vehicle,
                       ("objects/location", "objects/type")),
    "dsprites_loc": _three_way("dsprites", "2.", 80, 10, "dsprites.py (label_x_position, 16 classes; 80 / 10 / 10)",
                               _dsprites_x, ("label_x_position",), rescale=True),
    "dsprites_ori": _three_way("dsprites", "2.", 80, 10, "dsprites.py (label_orientation, 16 classes; 80 / 10 / 10)",
                               _dsprites_ori, ("label_orientation",), rescale=True),
    "smallnorb_azi": _norb("label_azimuth"),
    "smallnorb_ele": _norb("label_elevation"),
}
# Tasks left out, with the one line saying why (none at present: every label function is in the source).
REFUSED: dict[str, str] = {}

TRAIN800, VAL200 = 800, 200


# --- the TFDS folder ------------------------------------------------------------------------------------
def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(p) for p in name.split("."))


def find_version_dir(tfds_dir: Path, task: TfdsTask) -> Path:
    """``<tfds_dir>/<builder>/<config?>/<version>/`` for the highest version matching the task's."""
    base = tfds_dir / task.builder
    if not base.is_dir():
        raise DataError(f"no TFDS folder {base} (TFDS builder {task.builder}, version {task.version}*)")
    versions = [d for d in base.iterdir() if d.is_dir() and re.fullmatch(r"\d+\.\d+\.\d+", d.name)
                and (d.name == task.version or (task.version.endswith(".") and d.name.startswith(task.version)))]
    if not versions:
        found = sorted(d.name for d in base.iterdir() if d.is_dir())
        raise DataError(f"{base} holds no version {task.version}* (VTAB's, {task.source}); found: "
                        f"{', '.join(found) or 'nothing'}")
    d = max(versions, key=lambda p: _version_key(p.name))
    if not (d / "dataset_info.json").is_file():
        raise DataError(f"{d} has no dataset_info.json: not a prepared TFDS folder")
    return d


def split_shards(version_dir: Path, split: str) -> list[tuple[Path, int | None]]:
    """The shard files of ``split`` in shard order, each with its example count from dataset_info.json
    (None where it records none); ``DataError`` naming a split or shard that is missing."""
    info = json.loads((version_dir / "dataset_info.json").read_text(encoding="utf-8"))
    file_format = info.get("fileFormat", "tfrecord")  # absent in folders older than TFDS's array_record option
    if file_format != "tfrecord":
        raise DataError(f"{version_dir} was prepared in the {file_format} format (dataset_info.json fileFormat); "
                        "this exporter reads TFRecord shards: prepare it again with file_format='tfrecord'")
    name = info.get("name") or version_dir.parent.name
    if "/" in str(name):
        name = str(name).split("/")[0]
    splits = {s.get("name"): s for s in info.get("splits", [])}
    if split not in splits:
        raise DataError(f"{version_dir}/dataset_info.json has no split {split!r} (it has: "
                        f"{', '.join(map(str, splits)) or 'none'})")
    lengths = [int(x) for x in splits[split].get("shardLengths", [])]
    if lengths:
        m = len(lengths)
        files = [version_dir / f"{name}-{split}.tfrecord-{i:05d}-of-{m:05d}" for i in range(m)]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise DataError(f"{version_dir}: split {split!r} is missing shard(s) {', '.join(missing)} "
                            f"(dataset_info.json lists {m})")
        return list(zip(files, lengths, strict=True))
    pattern = re.compile(rf"{re.escape(name)}-{re.escape(split)}\.tfrecord-(\d{{5}})-of-(\d{{5}})")
    found = sorted((int(m.group(1)), int(m.group(2)), p) for p in version_dir.iterdir()
                   if (m := pattern.fullmatch(p.name)))
    if not found:
        raise DataError(f"{version_dir}: no shards {name}-{split}.tfrecord-*-of-* for split {split!r}")
    total = found[0][1]
    have = {i for i, _, _ in found}
    missing = [f"{name}-{split}.tfrecord-{i:05d}-of-{total:05d}" for i in range(total) if i not in have]
    if missing:
        raise DataError(f"{version_dir}: split {split!r} is missing shard(s) {', '.join(missing)}")
    return [(p, None) for _, _, p in found]


def _count(shards: list[tuple[Path, int | None]]) -> int:
    if all(n is not None for _, n in shards):
        return sum(n for _, n in shards)  # type: ignore[misc]
    return sum(sum(1 for _ in read_records(p, check_data_crc=False)) for p, _ in shards)


def _extension(data: bytes, where: str) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    raise DataError(f"{where}: the image is neither PNG nor JPEG (first bytes {data[:8]!r})")


def _rescale_01(data: bytes, where: str) -> bytes:
    """A dSprites PNG of 0/1 pixels as VTAB feeds it (``dsprites.py``: tiled to 3 channels, times 255)."""
    import io

    from PIL import Image

    pixels = np.asarray(decode_image_bytes(data, where))
    if pixels.max() > 1:
        raise DataError(f"{where}: a dSprites image should hold 0/1 pixels (its largest value is {pixels.max()})")
    out = io.BytesIO()
    Image.fromarray(pixels * np.uint8(255)).save(out, format="PNG")
    return out.getvalue()


class ExportedAlready(DataError):
    """The task is on disk already, in a folder the loader reads."""


@dataclass
class ExportResult:
    task: str
    folder: Path
    counts: dict[str, int]
    source: str


def export_vtab(tfds_dir: str | Path, task: str, out_root: str | Path) -> ExportResult:
    """Write VTAB-1k task ``task`` (a ``vtab-<task>`` name or an alias) from the TFDS data_dir ``tfds_dir``
    as the lists `clipfit.data.load_dataset` reads, under ``<out_root>/vtab-1k/<task folder>/``."""
    name = task if task.startswith(("vtab-", "vtba-")) else f"vtab-{task}"
    spec: VtabSpec = _vtab_spec(name)
    if spec.task in REFUSED:
        raise DataError(f"{spec.name}: not exported: {REFUSED[spec.task]}")
    t = TASKS[spec.task]
    final = Path(out_root).expanduser() / PARENTS[0] / spec.folders[0]
    # Any folder the loader would read the task from counts (vtab1k/, the data root, NOAH's folder names):
    # a second copy beside it would be the one read, or be shadowed.
    present = spec.found(Path(out_root).expanduser()) + ([final] if final.exists() else [])
    if present:
        raise ExportedAlready(f"{present[0]} already exists: {spec.name} was exported (or placed) there before; "
                              "remove that folder to export it again")
    tfds_dir = Path(tfds_dir).expanduser()
    vdir = find_version_dir(tfds_dir, t)
    splits = {s.split for s in (t.train, t.val, t.test)}
    shards = {s: split_shards(vdir, s) for s in sorted(splits)}
    counts = {s: _count(sh) for s, sh in shards.items()}
    tr, va, te = (s.resolve(counts) for s in (t.train, t.val, t.test))
    for what, (a, b), need in (("train", tr, TRAIN800), ("val", va, VAL200)):
        if b - a < need:
            sl = (t.train if what == "train" else t.val).split
            raise DataError(f"{spec.name}: VTAB's {what} split ({sl}[{a}:{b}] of {counts[sl]} examples in {vdir}, "
                            f"{t.source}) holds {b - a} examples, fewer than the {need} VTAB-1k takes")
    if te[1] <= te[0]:
        raise DataError(f"{spec.name}: VTAB's test split ({t.test.split}[{te[0]}:{te[1]}]) is empty in {vdir}")
    # Per TFDS split: (start, stop, list names) ranges of example indices.
    wanted: dict[str, list[tuple[int, int, tuple[str, ...]]]] = {s: [] for s in splits}
    wanted[t.train.split].append((tr[0], tr[0] + TRAIN800, ("train800", "train800val200")))
    wanted[t.val.split].append((va[0], va[0] + VAL200, ("val200", "train800val200")))
    wanted[t.test.split].append((te[0], te[1], ("test",)))
    # Written into a staging folder and renamed at the end, so a killed export leaves no half-written task
    # where the loader looks (a rerun clears the stale staging folder and starts again).
    folder = final.with_name(f".{final.name}.partial")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    lines: dict[str, list[str]] = {k: [] for k in LISTS}
    n_classes = len(spec.classnames)
    # train800val200 lists train800's examples first, then val200's (task_adaptation's "train[:800]+...").
    order = {"train800": 0, "val200": 1}
    pending_tv: list[tuple[int, str, bytes, int]] = []
    for split in sorted(splits):
        ranges = wanted[split]
        last = max(b for _, b, _ in ranges)
        index = 0
        for path, expected in shards[split]:
            if index >= last:
                break
            if expected is not None and not any(a < index + expected and index < b for a, b, _ in ranges):
                index += expected  # no wanted example in this shard: not even read
                continue
            got = 0
            for rec_i, rec in enumerate(read_records(path)):
                got += 1
                i = index + rec_i
                hits = [names for a, b, names in ranges if a <= i < b]
                if not hits:
                    continue
                where = f"{path}: record {rec_i}"
                try:
                    ex = parse_example(rec)
                except ValueError as exc:
                    raise DataError(f"{where}: not a tf.train.Example ({exc})") from None
                missing = [k for k in ("image", *t.label_keys) if k not in ex]
                if missing:
                    raise DataError(f"{where}: no feature {', '.join(map(repr, missing))} (VTAB's {spec.task} reads "
                                    f"it, {t.source}); the record's features: {', '.join(sorted(ex)) or 'none'}")
                try:
                    label = t.label(ex)
                except (ValueError, TypeError) as exc:
                    raise DataError(f"{where}: no label ({exc})") from None
                if not 0 <= label < n_classes:
                    raise DataError(f"{where}: label {label} is out of range 0..{n_classes - 1} for {spec.name}")
                image = ex["image"][0]
                ext = _extension(image, where)
                if t.rescale_01:
                    image = _rescale_01(image, where)
                for names in hits:
                    for lst in names:
                        if lst == "train800val200":
                            pending_tv.append((order[names[0]], i, image, label))
                        else:
                            _write(folder, lines, lst, image, ext, label)
            if expected is not None and got != expected:
                raise DataError(f"{path} holds {got} records, dataset_info.json says {expected}")
            index += got
    for _, _, image, label in sorted(pending_tv, key=lambda r: (r[0], r[1])):
        _write(folder, lines, "train800val200", image, _extension(image, "train800val200"), label)
    for lst, file in LISTS.items():
        (folder / file).write_text("".join(f"{line}\n" for line in lines[lst]), encoding="utf-8")
    os.replace(folder, final)
    return ExportResult(spec.name, final, {k: len(v) for k, v in lines.items()}, f"{vdir}; {t.source}")


def _write(folder: Path, lines: dict[str, list[str]], lst: str, image: bytes, ext: str, label: int) -> None:
    rel = f"images/{lst}/{len(lines[lst]):06d}.{ext}"
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image)
    lines[lst].append(f"{rel} {label}")


def tasks_found(tfds_dir: str | Path) -> list[str]:
    """The tasks (clipfit's names) whose TFDS builder folder is under ``tfds_dir``."""
    root = Path(tfds_dir).expanduser()
    return [name for name, t in TASKS.items() if (root / t.builder).is_dir()]
