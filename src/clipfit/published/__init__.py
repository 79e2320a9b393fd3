"""Published tables this package reproduces, as data: one YAML file per paper beside this module.

`load_published("clipfit-paper")` reads `clipfit-paper.yaml` (CLIPFit, Li et al., EMNLP 2024: Tables 1,
2, 3, 7, 9 and 10, ViT-B/16), or any file of the same format given by its path, into a `Published`; the
table renderer (`clipfit.tables`, `clipfit table RUNS --compare NAME`) prints our runs beside its cells.
Like `clipfit.recipes`, this module imports the standard library, PyYAML and the recipes' strict loader
only (no torch), and names the file and the key at fault in every error.

File format::

    name: clipfit-paper
    source: {paper: "...", venue: "...", backbone: "ViT-B/16 ..."}   # free text, printed with the comparison
    methods: {CLIP: zeroshot, CoOp: coop, ...}   # every method name the tables print -> this package's name
    tables:
      - key: table1                  # unique in the file
        title: "Table 1: ..."
        where: "Sec. 4.2, Table 1"   # where in the paper
        kind: base2new               # base2new | few-shot | cross-dataset | distribution-shift | vtab | efficiency
        shots: 16                    # the training shots (not for few-shot, whose rows are by shots)
        # base2new: the printed method columns, and one row per dataset with one value per method and metric
        methods: [CLIP, CoOp, ...]
        rows: {average: {base: [...], new: [...], hm: [...]}, imagenet: {...}, ...}
        # few-shot:            columns: [datasets..., average]; rows: {shots: {method: [one per column]}}
        # cross-dataset, distribution-shift, vtab: columns: [...]; rows: {method: [one per column]}
        # efficiency:          columns: [trainable_parameters, ms_per_image]; rows: {method: [...]};
        #                      protocol: the protocol its numbers are for
        averages: {average: [columns...]}   # which columns (base2new: rows) an averaged column is the mean of
        does_not_check:                     # printed cells that fail the table's own arithmetic, kept as printed
          - {method: CoCoOp, column: stanford_cars, metric: new, why: "..."}
        notes: ["..."]

A value is a number or null (illegible in the source). Column and row names are this package's dataset
names (`clipfit data list`) or ``average``; metrics are ``base``, ``new``, ``hm`` (base2new), ``accuracy``
(the accuracy tables) or the column's own name (efficiency).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import ClipFitError
from ..recipes import _StrictLoader

PUBLISHED_DIR = Path(__file__).resolve().parent
KINDS = ("base2new", "few-shot", "cross-dataset", "distribution-shift", "vtab", "efficiency")
B2N_METRICS = ("base", "new", "hm")

# (our method name, shots or None, column, metric)
CellKey = tuple[str, "int | None", str, str]


@dataclass(frozen=True)
class PublishedCell:
    """One printed number: ``value``, the paper's method name as printed, and ``doubt``, why it does not
    check against its own table (None when it does)."""

    value: float
    printed_method: str
    doubt: str | None = None


@dataclass(frozen=True)
class PublishedTable:
    """One published table, its cells keyed by (our method name, shots, column, metric)."""

    key: str
    title: str
    where: str
    kind: str
    shots: int | None
    protocol: str | None
    columns: tuple[str, ...]
    averages: dict[str, tuple[str, ...]]
    cells: dict[CellKey, PublishedCell]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Published:
    """A paper's published tables: ``name``, ``source`` (free text: paper, venue, backbone), ``methods``
    (printed name -> ours) and ``tables`` in the file's order."""

    name: str
    source: dict[str, str]
    methods: dict[str, str]
    tables: tuple[PublishedTable, ...] = field(default_factory=tuple)

    def tables_of(self, kind: str, shots: int | None = None) -> list[PublishedTable]:
        """The tables of ``kind`` (and of ``shots``, for a kind whose tables are by shots)."""
        return [t for t in self.tables if t.kind == kind and (shots is None or t.shots in (None, shots))]

    def cite(self) -> str:
        """One line naming the source: paper, venue, backbone."""
        s = self.source
        return "; ".join(part for part in (f"{s.get('paper', self.name)}", s.get("venue"), s.get("backbone")) if part)


def published_names() -> list[str]:
    """The names of the shipped published tables (`--compare NAME`)."""
    return sorted(p.stem for p in PUBLISHED_DIR.glob("*.yaml"))


def load_published(name_or_path: str | Path) -> Published:
    """The published tables named ``name_or_path`` (a shipped name, see `published_names`) or read from
    that YAML file. `ClipFitError` naming the file and the key at fault, or the shipped names."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PUBLISHED_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ClipFitError(
                f"--compare {name_or_path}: no such published table set; shipped: {', '.join(published_names())}"
                " (or give the path of a YAML file in their format)"
            )
    return _load(path.resolve())


@functools.lru_cache(maxsize=8)
def _load(path: Path) -> Published:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)
    except OSError as err:
        raise ClipFitError(f"{path}: cannot be read ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ClipFitError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    where = str(path)
    data = _mapping(data, where, ("name", "source", "methods", "tables"), ("name", "methods", "tables"))
    methods = _mapping(data["methods"], f"{where}: methods")
    for printed, ours in methods.items():
        if not isinstance(ours, str):
            raise ClipFitError(f"{where}: methods.{printed}: must name one of this package's methods")
    if not isinstance(data["tables"], list):
        raise ClipFitError(f"{where}: tables: must be a list")
    tables, keys = [], set()
    for i, raw in enumerate(data["tables"]):
        table = _table(raw, f"{where}: tables[{i}]", methods)
        if table.key in keys:
            raise ClipFitError(f"{where}: tables[{i}].key: {table.key!r} is given twice")
        keys.add(table.key)
        tables.append(table)
    source = {str(k): str(v) for k, v in _mapping(data.get("source", {}), f"{where}: source").items()}
    return Published(str(data["name"]), source, dict(methods), tuple(tables))


TABLE_KEYS = ("key", "title", "where", "kind", "shots", "protocol", "methods", "columns", "rows", "averages",
              "does_not_check", "notes")


def _table(raw, where: str, methods: dict[str, str]) -> PublishedTable:
    raw = _mapping(raw, where, TABLE_KEYS, ("key", "title", "where", "kind", "rows"))
    where = f"{where} ({raw['key']})"
    kind = raw["kind"]
    if kind not in KINDS:
        raise ClipFitError(f"{where}.kind: {kind!r} is none of {', '.join(KINDS)}")
    shots = raw.get("shots")
    if shots is not None and (not isinstance(shots, int) or kind == "few-shot"):
        raise ClipFitError(f"{where}.shots: a whole number, and not for a few-shot table (its rows are by shots)")

    def ours(printed) -> str:
        if printed not in methods:
            raise ClipFitError(f"{where}: method {printed!r} is not in the file's methods mapping")
        return methods[printed]

    cells: dict[CellKey, PublishedCell] = {}

    def put(method: str, shots_: int | None, column: str, metric: str, value, at: str) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ClipFitError(f"{where}: {at}: {value!r} is not a number (null for an illegible cell)")
        cells[(ours(method), shots_, column, metric)] = PublishedCell(float(value), method)

    rows = _mapping(raw["rows"], f"{where}.rows")
    if kind == "base2new":
        printed = _names(raw.get("methods"), f"{where}.methods")
        columns = tuple(rows)
        for column, by_metric in rows.items():
            by_metric = _mapping(by_metric, f"{where}.rows.{column}", B2N_METRICS, B2N_METRICS)
            for metric, values in by_metric.items():
                _length(values, len(printed), f"{where}.rows.{column}.{metric}", "methods")
                for method, value in zip(printed, values):
                    put(method, shots, column, metric, value, f"rows.{column}.{metric} ({method})")
    else:
        columns = tuple(_names(raw.get("columns"), f"{where}.columns"))
        nested = rows.items() if kind == "few-shot" else [(shots, rows)]
        for shots_, by_method in nested:
            if not isinstance(shots_, int) and kind == "few-shot":
                raise ClipFitError(f"{where}.rows: {shots_!r} is not a number of shots")
            for method, values in _mapping(by_method, f"{where}.rows").items():
                _length(values, len(columns), f"{where}.rows.{method}", "columns")
                for column, value in zip(columns, values):
                    metric = column if kind == "efficiency" else "accuracy"
                    put(method, shots_, column, metric, value, f"rows.{method} ({column})")
    averages = {}
    for column, over in _mapping(raw.get("averages", {}), f"{where}.averages").items():
        averages[column] = tuple(_names(over, f"{where}.averages.{column}"))
    for i, doubt in enumerate(raw.get("does_not_check") or []):
        at = f"{where}.does_not_check[{i}]"
        doubt = _mapping(doubt, at, ("method", "column", "metric", "shots", "why"), ("method", "column", "why"))
        key = (ours(doubt["method"]), doubt.get("shots", shots), doubt["column"], doubt.get("metric", "accuracy"))
        if key not in cells:
            raise ClipFitError(f"{at}: names no printed cell of the table")
        cells[key] = PublishedCell(cells[key].value, cells[key].printed_method, str(doubt["why"]))
    notes = tuple(str(n) for n in raw.get("notes") or [])
    return PublishedTable(str(raw["key"]), str(raw["title"]), str(raw["where"]), kind, shots, raw.get("protocol"),
                          columns, averages, cells, notes)


def _mapping(value, where: str, allowed: tuple[str, ...] | None = None, required: tuple[str, ...] = ()) -> dict:
    if not isinstance(value, dict):
        raise ClipFitError(f"{where}: must be a mapping, not {type(value).__name__}")
    if allowed is not None:
        unknown = [str(k) for k in value if k not in allowed]
        if unknown:
            raise ClipFitError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(allowed)})")
    missing = [k for k in required if k not in value]
    if missing:
        raise ClipFitError(f"{where}: the key {missing[0]!r} is missing")
    return value


def _names(value, where: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ClipFitError(f"{where}: must be a list of names")
    return value


def _length(values, n: int, where: str, what: str) -> None:
    if not isinstance(values, list) or len(values) != n:
        count = len(values) if isinstance(values, list) else type(values).__name__
        raise ClipFitError(f"{where}: {count} values for {n} {what}")
