"""`clipfit data export-vtab`: VTAB-1k lists from TFDS-prepared folders, read without TensorFlow.

The fixtures are written here in TFDS's on-disk layout (dataset_info.json, <builder>-<split>.tfrecord-0000N-of-
0000M shards) by a writer independent of the reader: a bitwise CRC32C (not the reader's table), protobuf
encoded by hand from the wire-format rules (non-packed int64s and floats, which TFDS's own writer packs, so
both encodings are exercised), PNGs built with zlib. Expected labels are worked out by hand from
task_adaptation's definitions, not with the exporter's functions.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest

from clipfit.cli import main
from clipfit.data import load_dataset
from clipfit.errors import DataError


def _crc32c_bitwise(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def _mask(data: bytes) -> int:
    c = _crc32c_bitwise(data)
    return ((((c & 0xFFFFFFFF) >> 15) | (c << 17)) + 0xA282EAD8) % (1 << 32)


def _uvarint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        low, v = v & 0x7F, v >> 7
        out.append(low | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _len_field(number: int, body: bytes) -> bytes:
    return _uvarint(number << 3 | 2) + _uvarint(len(body)) + body


def _example(features: dict, packed: bool = False) -> bytes:
    entries = b""
    for key, value in features.items():
        if isinstance(value, bytes):
            feature = _len_field(1, _len_field(1, value))
        elif all(isinstance(x, int) for x in value) and packed:  # Int64List, packed as TFDS writes it
            feature = _len_field(3, _len_field(1, b"".join(_uvarint(x) for x in value)))
        elif all(isinstance(x, int) for x in value):  # Int64List, one varint field per value
            feature = _len_field(3, b"".join(_uvarint(1 << 3 | 0) + _uvarint(x) for x in value))
        elif packed:  # FloatList, packed
            feature = _len_field(2, _len_field(1, struct.pack(f"<{len(value)}f", *value)))
        else:  # FloatList, one fixed32 field per value
            feature = _len_field(2, b"".join(_uvarint(1 << 3 | 5) + struct.pack("<f", x) for x in value))
        entries += _len_field(1, _len_field(1, key.encode()) + _len_field(2, feature))
    return _len_field(1, entries)


def _record(data: bytes) -> bytes:
    head = struct.pack("<Q", len(data))
    return head + struct.pack("<I", _mask(head)) + data + struct.pack("<I", _mask(data))


def _png(value: int, pixels: bytes | None = None) -> bytes:
    """A 2x1 8-bit grayscale PNG whose pixels encode ``value`` (so each image differs), or are ``pixels``."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    raw = b"\x00" + (pixels if pixels is not None else bytes([value % 256, value // 256 % 256]))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 1, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def write_tfds(root: Path, builder: str, version: str, splits: dict[str, list[dict]], shards: int = 2,
               packed: bool = False) -> Path:
    """``splits`` (name -> examples, each a feature dict) written as TFDS writes a prepared folder."""
    d = root / builder / version
    d.mkdir(parents=True)
    name = builder.split("/")[0]
    info_splits = []
    for split, examples in splits.items():
        per = -(-len(examples) // shards)
        chunks = [examples[i * per:(i + 1) * per] for i in range(shards)]
        for i, chunk in enumerate(chunks):
            path = d / f"{name}-{split}.tfrecord-{i:05d}-of-{shards:05d}"
            path.write_bytes(b"".join(_record(_example(ex, packed)) for ex in chunk))
        info_splits.append({"name": split, "numBytes": "0", "shardLengths": [str(len(c)) for c in chunks]})
    (d / "dataset_info.json").write_text(json.dumps({"name": name, "version": version, "splits": info_splits}))
    (d / "features.json").write_text("{}")
    return d


def _labelled(n: int, classes: int, offset: int = 0) -> list[dict]:
    return [{"image": _png(offset + i), "label": [(offset + i) % classes]} for i in range(n)]


@pytest.fixture
def cifar(tmp_path):
    """cifar100 3.0.2: TFDS train 2,000 (VTAB train = train[:1800], val = train[1800:]), test 30."""
    tfds = tmp_path / "tfds"
    write_tfds(tfds, "cifar100", "3.0.2", {"train": _labelled(2000, 100), "test": _labelled(30, 100, 5000)})
    return tfds


def _lines(path: Path) -> list[tuple[str, int]]:
    return [(p, int(label)) for p, label in (line.rsplit(" ", 1) for line in path.read_text().splitlines())]


def test_cifar_lists_are_vtab1k_slices_of_the_tfds_splits(cifar, tmp_path):
    out = tmp_path / "data"
    main(["data", "export-vtab", "--tfds-dir", str(cifar), "--task", "vtab-cifar", "--out", str(out)])
    splits = load_dataset("vtab-cifar100", out)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1000, 200, 30)
    folder = out / "vtab-1k" / "cifar"
    # train800 = train[:800]: examples 0..799, labels i % 100; val200 = train[1800:2000].
    assert [label for _, label in _lines(folder / "train800.txt")] == [i % 100 for i in range(800)]
    assert [label for _, label in _lines(folder / "val200.txt")] == [i % 100 for i in range(1800, 2000)]
    assert [s.label for s in splits.train] == [i % 100 for i in range(800)] + [i % 100 for i in range(1800, 2000)]
    assert [s.label for s in splits.test] == [(5000 + i) % 100 for i in range(30)]
    # The image bytes are TFDS's, as stored: val200's first image is TFDS train example 1800.
    first_val = folder / _lines(folder / "val200.txt")[0][0]
    assert first_val.suffix == ".png" and first_val.read_bytes() == _png(1800)
    assert _lines(folder / "test.txt")[29][0] == "images/test/000029.png"


def test_clevr_labels_are_computed_from_the_objects(tmp_path):
    # clevr.py: count_all = number of objects - 3; closest_object_distance = the last of the thresholds
    # 0, 8, 8.5, 9, 9.5, 10, 100 below the smallest pixel_coords z.
    def scene(i, zs):
        return {"image": _png(i), "objects/size": [0] * len(zs),
                "objects/pixel_coords": [c for z in zs for c in (10.0, 20.0, z)]}
    train = [scene(i, [12.0, 11.0, 10.5]) for i in range(2000)]
    test = [scene(3000, [9.25, 12.0, 11.0]), scene(3001, [7.5, 8.0, 9.0, 9.0, 11.0]),
            scene(3002, [10.0, 10.0, 10.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0, 18.0])]
    tfds = tmp_path / "tfds"
    write_tfds(tfds, "clevr", "3.1.0", {"train": train, "validation": test})
    out = tmp_path / "data"
    main(["data", "export-vtab", "--tfds-dir", str(tfds), "--task", "all", "--out", str(out)])
    count = load_dataset("vtab-clevr_count", out)
    dist = load_dataset("vtab-clevr_dist", out)
    assert [s.label for s in count.test] == [0, 2, 7]
    assert [s.label for s in dist.test] == [3, 0, 4]  # 9.25 -> (9, 9.5]; 7.5 -> (0, 8]; 10.0 -> (9.5, 10]
    assert {s.label for s in count.train} == {0} and {s.label for s in dist.train} == {5}


def test_kitti_closest_vehicle_distance_from_packed_objects(tmp_path):
    # kitti.py: z of Car / Van / Truck (type < 3) plus 1000; bins -100, 8, 20, 999. TFDS packs the lists.
    def frame(i, objects):
        return {"image": _png(i), "objects/type": [t for t, _ in objects],
                "objects/location": [c for _, z in objects for c in (-1.5, 1.0, z)]}
    train = [frame(i, [(0, 30.0)]) for i in range(800)]
    val = [frame(1000 + i, []) for i in range(200)]
    test = [frame(2000, [(3, 2.0), (0, 15.0)]), frame(2001, [(2, 5.0), (1, 40.0)]), frame(2002, [(5, 3.0)]),
            frame(2003, [(1, 20.5), (7, 1.0)])]
    tfds = tmp_path / "tfds"
    write_tfds(tfds, "kitti", "3.3.0", {"train": train, "validation": val, "test": test}, packed=True)
    out = tmp_path / "data"
    main(["data", "export-vtab", "--tfds-dir", str(tfds), "--task", "kitti", "--out", str(out)])
    splits = load_dataset("vtab-kitti", out)
    assert [s.label for s in splits.test] == [1, 0, 3, 2]
    assert [s.label for s in splits.train] == [2] * 800 + [3] * 200


def test_dsprites_three_way_slices_bins_and_0_255_pixels(tmp_path):
    from PIL import Image

    # dsprites.py: of TFDS train (2,000 here) VTAB train = [:1600], val = [1600:1800], test = [1800:];
    # orientation 40 values -> 16 classes by floor(v / 2.5); x position 32 -> 16 by v // 2.
    examples = [{"image": _png(0, bytes([i % 2, 1])), "label_orientation": [i % 40], "label_x_position": [i % 32]}
                for i in range(2000)]
    tfds = tmp_path / "tfds"
    write_tfds(tfds, "dsprites", "2.0.0", {"train": examples}, packed=True)
    out = tmp_path / "data"
    main(["data", "export-vtab", "--tfds-dir", str(tfds), "--task", "vtab-dSprites_orientation", "--out", str(out)])
    main(["data", "export-vtab", "--tfds-dir", str(tfds), "--task", "dsprites_loc", "--out", str(out)])
    ori, loc = load_dataset("vtab-dsprites_ori", out), load_dataset("vtab-dsprites_loc", out)
    by_hand = {0: 0, 1: 0, 2: 0, 3: 1, 4: 1, 5: 2, 7: 2, 8: 3, 37: 14, 38: 15, 39: 15}
    for i, s in enumerate(ori.val):
        v = (1600 + i) % 40
        if v in by_hand:
            assert s.label == by_hand[v]
    assert [s.label for s in loc.test] == [((1800 + i) % 32) // 2 for i in range(200)]
    assert len(ori.test) == 200 and len(ori.train) == 1000
    # Example 1801: gray pixels (1, 1) stored; written as VTAB feeds them, tiled to RGB and times 255.
    with Image.open(loc.test[1].path) as img:
        assert img.mode == "RGB" and list(img.getdata()) == [(255, 255, 255)] * 2


def test_a_corrupt_crc_is_refused_naming_file_and_record(cifar, tmp_path, capsys):
    shard = cifar / "cifar100" / "3.0.2" / "cifar100-train.tfrecord-00000-of-00002"
    data = bytearray(shard.read_bytes())
    # The third record: skip two, flip a byte of its data.
    pos = 0
    for _ in range(2):
        (n,) = struct.unpack("<Q", data[pos:pos + 8])
        pos += 16 + n
    data[pos + 12 + 5] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(SystemExit):
        main(["data", "export-vtab", "--tfds-dir", str(cifar), "--task", "cifar100", "--out", str(tmp_path / "o")])
    assert "cifar100-train.tfrecord-00000-of-00002: record 2: the CRC32C of its data" in capsys.readouterr().err
    # Nothing half-written where the loader looks: the task folder does not exist, only the staging folder.
    assert not (tmp_path / "o" / "vtab-1k" / "cifar").exists()


def test_a_rerun_refuses_to_overwrite_and_a_stale_staging_folder_is_cleared(cifar, tmp_path):
    from clipfit.data.tfds import export_vtab

    out = tmp_path / "o"
    stale = out / "vtab-1k" / ".cifar.partial"
    stale.mkdir(parents=True)
    (stale / "train800.txt").write_text("images/old.png 3\n")
    result = export_vtab(cifar, "cifar100", out)
    assert result.folder == out / "vtab-1k" / "cifar" and not stale.exists()
    before = (result.folder / "train800.txt").read_text()
    with pytest.raises(DataError, match=r"vtab-1k/cifar already exists: vtab-cifar100 was exported"):
        export_vtab(cifar, "cifar100", out)
    assert (result.folder / "train800.txt").read_text() == before


def test_a_missing_shard_and_a_missing_split_are_named(cifar, tmp_path):
    from clipfit.data.tfds import export_vtab

    d = cifar / "cifar100" / "3.0.2"
    (d / "cifar100-test.tfrecord-00001-of-00002").unlink()
    with pytest.raises(DataError, match=r"split 'test' is missing shard\(s\) cifar100-test\.tfrecord-00001-of-00002"):
        export_vtab(cifar, "vtab-cifar100", tmp_path / "o")
    info = json.loads((d / "dataset_info.json").read_text())
    info["splits"] = [s for s in info["splits"] if s["name"] != "test"]
    (d / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"has no split 'test' \(it has: train\)"):
        export_vtab(cifar, "vtab-cifar100", tmp_path / "o")
    info["fileFormat"] = "array_record"
    (d / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"prepared in the array_record format .*file_format='tfrecord'"):
        export_vtab(cifar, "vtab-cifar100", tmp_path / "o")


def test_slices_beyond_the_examples_present_are_refused(tmp_path):
    from clipfit.data.tfds import export_vtab

    tfds = tmp_path / "tfds"
    # dtd: VTAB train = TFDS train, of which VTAB-1k takes the first 800; 500 are present.
    write_tfds(tfds, "dtd", "3.0.1", {"train": _labelled(500, 47), "validation": _labelled(300, 47, 1000),
                                       "test": _labelled(10, 47, 2000)})
    with pytest.raises(DataError, match=r"VTAB's train split \(train\[0:500\].*holds 500 examples, fewer than the 800"):
        export_vtab(tfds, "dtd", tmp_path / "o")


def test_a_record_without_the_feature_the_task_reads_is_refused(tmp_path):
    from clipfit.data.tfds import export_vtab

    tfds = tmp_path / "tfds"
    def bad(n):
        return [{"image": _png(i), "label_azimuth_typo": [1]} for i in range(n)]
    write_tfds(tfds, "smallnorb", "2.0.0", {"train": bad(900), "test": bad(600)})
    with pytest.raises(DataError, match=r"record 0: no feature 'label_azimuth'.*features: image, label_azimuth_typo"):
        export_vtab(tfds, "vtab-smallnorb_azimuth", tmp_path / "o")


def test_the_crc32c_table_matches_the_standard_check_value():
    from clipfit.data.tfds import crc32c

    assert crc32c(b"123456789") == 0xE3069283 == _crc32c_bitwise(b"123456789")


def test_the_module_needs_no_tensorflow():
    import ast

    import clipfit.data.tfds as mod

    tree = ast.parse(Path(mod.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {n for n in names if n.split(".")[0] in ("tensorflow", "tensorflow_datasets")}


def test_shards_without_a_wanted_example_are_not_read(tmp_path):
    from clipfit.data.tfds import export_vtab

    tfds = tmp_path / "tfds"
    # 4 train shards of 500: train800 takes [0, 800) and val200 [1800, 2000), so shard 2 ([1000, 1500)) holds
    # nothing wanted. Its bytes are garbage: reading it would fail its CRC.
    d = write_tfds(tfds, "cifar100", "3.0.2", {"train": _labelled(2000, 100), "test": _labelled(30, 100, 5000)},
                   shards=4)
    (d / "cifar100-train.tfrecord-00002-of-00004").write_bytes(b"\x00" * 64)
    result = export_vtab(tfds, "cifar100", tmp_path / "o")
    assert result.counts["train800"] == 800 and result.counts["val200"] == 200


def test_a_task_already_on_disk_anywhere_the_loader_reads_is_not_written_again(cifar, tmp_path, capsys):
    from clipfit.data.tfds import ExportedAlready, export_vtab

    out = tmp_path / "o"
    noah = out / "vtab1k" / "cifar100"  # NOAH's scripts' folder name, under the other parent the loader accepts
    noah.mkdir(parents=True)
    (noah / "test.txt").write_text("")
    with pytest.raises(ExportedAlready, match=r"vtab1k/cifar100 already exists"):
        export_vtab(cifar, "cifar100", out)
    assert not (out / "vtab-1k").exists()
    # --task all skips what is there and says so; exit status 0.
    main(["data", "export-vtab", "--tfds-dir", str(cifar), "--task", "all", "--out", str(out)])
    assert capsys.readouterr().out.startswith("cifar100: skipped, ")


def test_the_exporter_reads_the_tfds_builders_and_versions_the_task_list_names():
    """vtab1k.json names each task's TFDS builder and version ("name:3.*.*" or an exact "name:3.0.1"); the
    exporter's table must read the same ones."""
    from clipfit.data.tfds import TASKS
    from clipfit.data.vtab import _vtab_spec

    for task, t in TASKS.items():
        builder, version = _vtab_spec(f"vtab-{task}").tfds.split(":")
        assert (t.builder, t.version) == (builder, version.replace("*.*", "")), task
