"""Tables of finished runs in the papers' formats, read from the run folders alone (`clipfit table RUNS`).

    from clipfit.tables import render_table
    print(render_table(["runs/"]))                                  # one Markdown table per protocol present
    render_table(["runs/"], kind="base2new", fmt="csv", compare="clipfit-paper")

One table per protocol kind, backbone and (where the papers split them so) shots:

- ``base2new``: rows Base / New / HM per dataset, a column per method; the Average rows first: the mean
  Base and the mean New over the datasets and the HM of those two means, as CoCoOp (CVPR 2022, Table 1)
  and CLIPFit (EMNLP 2024, Table 1) average; each dataset's HM is the HM of its mean Base and mean New.
- ``few-shot``: a row per shots and method, a column per dataset and their mean (CLIPFit Tables 10, 2).
- ``cross-dataset``: a row per method: the source, each target, the targets' mean (CLIPFit Table 9).
- ``distribution-shift``: a row per method: the source, each shifted test set, their mean (Table 3).
- ``vtab``: a row per method: each VTAB-1k task, the Natural / Specialized / Structured means (each over
  the group's tasks) and the mean of those three, as the VTAB papers report them.
- ``efficiency``: a row per method and protocol: trainable parameters, seconds per seed run (Table 7).

Every cell is the mean ± std (sample std) over seeds, the number of seeds in brackets. A cell with fewer
seeds than the table's others (or than ``seeds``) is marked ``*``; an average over fewer columns than the
table has (a dataset not run) ``‡``; cells whose runs drew different training images for the same dataset,
shots and seed (per-seed ``fewshot_sha256``: two machines, two copies of a dataset) ``†``; each mark has a
footnote naming the cells. A method that trains nothing (zero-shot: no ``shots`` in its recorded setting)
does not depend on the seed, so one seed is its whole result and it is not marked.

Run folders are those the store writes (`clipfit.store`): ``summary.json`` and ``seedN/metrics.json`` +
``config.json``; a path that is not one is searched for them. Two folders of the same method, dataset and
protocol are merged when their settings agree (seeds run on two machines), refused when they do not.

``compare`` ("clipfit-paper", `clipfit.published`) adds the published number beside each cell and our
mean minus it; a published cell we have no run for shows as "-".

CSV (``fmt="csv"``) is one row per cell with its place (table, method, shots, column, metric) and its
numbers, marks and published value, so a spreadsheet or pandas rebuilds any of the grids.
"""

from __future__ import annotations

import csv
import io
import os
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import data
from .errors import ClipFitError
from .methods import METHODS
from .protocols import harmonic_mean
from .published import Published, PublishedCell, PublishedTable, load_published
from .store import differing_fields, read_json_object

KINDS = ("base2new", "few-shot", "cross-dataset", "distribution-shift", "vtab", "efficiency")
PROTOCOL_KINDS = KINDS[:-1]  # the kinds that are protocols; efficiency is over runs of any
FORMATS = ("md", "csv")
B2N_METRICS = ("base", "new", "hm")
METRIC_TITLES = {"base": "Base", "new": "New", "hm": "HM"}
AVERAGE = "average"
SEEDS_MARK, PARTIAL_MARK, DRAW_MARK, DOUBT_MARK = "*", "‡", "†", "?"

# VTAB-1k's 19 tasks by group, in the VTAB papers' column order (Zhai et al., 2019; the same as the
# PEFT-for-CLIP study's), with their tables' short titles; runs name them `vtab-<task>`. Kept here until
# the data module's task list carries the groups; a registered dataset's own title wins over these.
# VTAB-1k's groups, each with its tasks' dataset names in VTAB's order (`clipfit.data.VTAB_GROUPS`).
VTAB_GROUPS: dict[str, list[str]] = {
    group: [task for task, g in data.VTAB_GROUPS.items() if g == group]
    for group in dict.fromkeys(data.VTAB_GROUPS.values())
}
VTAB_GROUP_TITLES = {"natural": "Natural", "specialized": "Specialized", "structured": "Structured", "mean": "Mean"}

# Setting fields that may differ between two folders of one setting: where each machine keeps its data.
_MACHINE_FIELDS = ("data_root",)
_SEED_FOLDER = re.compile(r"seed(\d+)")
_NOT_METRICS = ("final_train_loss", "seconds", "seed", "recipe", "trainable_parameters")


# ---------------------------------------------------------------------------------------------- run folders


@dataclass
class RunFolder:
    """One run folder as read from disk. ``shots`` is None for a method that trains nothing (zero-shot),
    whose numbers depend on neither the seed nor the shots; ``seeds`` maps each finished seed to its
    metrics.json; ``paths`` lists the folders merged into it (one, unless seeds were run apart)."""

    path: Path
    method: str
    model: str
    pretrained: str
    dataset: str
    protocol: str
    shots: int | None
    source: str | None
    targets: tuple[str, ...]
    setting: dict
    seeds: dict[int, dict]
    paths: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def backbone(self) -> tuple[str, str]:
        return self.model, self.pretrained


def _is_run_folder(path: Path) -> bool:
    if (path / "summary.json").is_file():
        return True
    try:
        return any(_SEED_FOLDER.fullmatch(p.name) and (p / "metrics.json").is_file() for p in path.iterdir())
    except OSError:
        return False


def find_run_folders(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Every run folder among ``paths``: a path that holds ``summary.json`` or ``seedN/metrics.json`` is one;
    any other folder is searched for them (not inside a run folder found). `ClipFitError` naming a path that
    does not exist or holds none."""
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            raise ClipFitError(f"{path}: no such folder (give run folders, or folders that hold them)")
        if _is_run_folder(path):
            found.append(path)
            continue
        inside = []
        for folder, subfolders, _ in os.walk(path):
            subfolders.sort()
            if _is_run_folder(Path(folder)):
                inside.append(Path(folder))
                subfolders.clear()
        if not inside:
            raise ClipFitError(f"{path}: holds no run folder (a folder with summary.json or seedN/metrics.json)")
        found += inside
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


def read_run_folder(path: str | os.PathLike) -> RunFolder:
    """The run folder at ``path``: its setting from ``summary.json`` (else from a seed's ``config.json``) and
    every finished seed (``seedN/metrics.json``, else the summary's copy). `ClipFitError` naming the file
    at fault."""
    path = Path(path)
    fix = "move that run folder out of the folders given"
    summary = read_json_object(path / "summary.json", fix) if (path / "summary.json").is_file() else {}
    named_by = path / "summary.json"
    seeds: dict[int, dict] = {}
    for i, metrics in enumerate(summary.get("per_seed") or []):
        if not isinstance(metrics, dict) or not isinstance(metrics.get("seed"), int):
            raise ClipFitError(f"{named_by}: per_seed[{i}] records no seed; {fix}")
        seeds[metrics["seed"]] = metrics
    config = None
    for sub in sorted(p for p in path.iterdir() if _SEED_FOLDER.fullmatch(p.name)):
        if (sub / "metrics.json").is_file():
            metrics = read_json_object(sub / "metrics.json", fix)
            seed = metrics.get("seed", int(_SEED_FOLDER.fullmatch(sub.name)[1]))
            seeds[seed] = metrics
            if config is None and (sub / "config.json").is_file():
                config = sub / "config.json"
    if "protocol" in summary:
        info, setting = summary, summary.get("setting", {})
    elif config is not None:
        from .config import RunConfig
        from .store import setting as setting_of

        info, named_by = read_json_object(config, fix), config
        setting = setting_of(RunConfig.from_dict(info, str(config)))
        info = {**info, "source": info["dataset"] if info.get("targets") else None}
    else:
        raise ClipFitError(f"{path}: neither summary.json nor a seed's config.json names its protocol; {fix}")
    if not isinstance(info, dict):
        raise ClipFitError(f"{named_by}: not a run's summary; {fix}")
    missing = [k for k in ("method", "model", "pretrained", "dataset", "protocol") if not isinstance(info.get(k), str)]
    if missing:
        raise ClipFitError(f"{named_by}: no {missing[0]!r} field (not written by clipfit?); {fix}")
    trains = "shots" in setting or not setting
    targets = tuple(info.get("targets") or ())
    if info["protocol"] in ("cross-dataset", "distribution-shift") and not targets and seeds:
        first = next(iter(seeds.values()))
        targets = tuple(k for k in _metric_names(first) if k not in (info["dataset"], AVERAGE))
    return RunFolder(path=path, method=info["method"], model=info["model"], pretrained=info["pretrained"],
                     dataset=info["dataset"], protocol=info["protocol"],
                     shots=int(info.get("shots") or 0) if trains else None,
                     source=info.get("source") or info["dataset"], targets=targets, setting=setting,
                     seeds=dict(sorted(seeds.items())), paths=[path])


def _metric_names(metrics: dict) -> list[str]:
    """The accuracies of a metrics.json (the keys the store averages): numbers, not counts or bookkeeping."""
    return [k for k, v in metrics.items()
            if isinstance(v, float) and not k.endswith("_n") and k not in _NOT_METRICS]


def load_runs(paths: Iterable[str | os.PathLike]) -> list[RunFolder]:
    """Every run folder among ``paths`` (see `find_run_folders`), read, with folders of one setting merged."""
    return merge_runs([read_run_folder(p) for p in find_run_folders(paths)])


def merge_runs(runs: Sequence[RunFolder]) -> list[RunFolder]:
    """One `RunFolder` per cell: folders of the same method, backbone, dataset, protocol and shots are merged
    (their seeds joined) when their settings agree but for where the data lives; `ClipFitError` naming both
    folders and the fields that differ otherwise (render them apart)."""
    merged: dict[tuple, RunFolder] = {}
    for run in runs:
        key = (run.protocol, run.model, run.pretrained, run.method, run.dataset, run.shots)
        first = merged.get(key)
        if first is None:
            merged[key] = RunFolder(**{**run.__dict__, "seeds": dict(run.seeds), "paths": list(run.paths),
                                       "notes": list(run.notes)})
            continue
        a, b = ({k: v for k, v in s.items() if k not in _MACHINE_FIELDS} for s in (first.setting, run.setting))
        if a and b and a != b:
            raise ClipFitError(
                f"{first.paths[0]} and {run.path}: two settings of {run.method} on {run.dataset} ({run.protocol}) "
                f"differ in {', '.join(differing_fields(a, b))}; render them in separate tables"
            )
        for seed, metrics in run.seeds.items():
            if seed in first.seeds and _metric_values(first.seeds[seed]) != _metric_values(metrics):
                first.notes.append(f"seed {seed} of {run.method} on {_title(run.dataset)} is in {first.paths[0]} "
                                   f"and {run.path} with other numbers; the first is shown")
                continue
            first.seeds.setdefault(seed, metrics)
        first.seeds = dict(sorted(first.seeds.items()))
        first.paths.append(run.path)
    return list(merged.values())


def _metric_values(metrics: dict) -> dict:
    return {k: metrics[k] for k in _metric_names(metrics)}


# ---------------------------------------------------------------------------------------------- cells


@dataclass
class Cell:
    """One number of a table, at (``method``, ``shots``, ``column``, ``metric``). ``values``: per seed (empty:
    no run); ``mean``: their mean, or the value derived from other means (an HM); ``std`` over the per-seed
    values (None for one); ``seed_free``: from a method that trains nothing; ``partial``: an average over
    fewer columns than the table has (which are missing); ``short``: fewer seeds than expected; ``draws``:
    the seed whose training images differ from another cell's; ``paper``: the published number."""

    method: str
    shots: int | None
    column: str
    metric: str
    protocol: str = ""
    values: dict = field(default_factory=dict)
    mean: float | None = None
    std: float | None = None
    seed_free: bool = False
    partial: str | None = None
    short: bool = False
    draws: bool = False
    paper: PublishedCell | None = None
    runs: tuple[str, ...] = ()
    text: str | None = None  # shown instead of the mean (a range of parameter counts)
    digits: int = 2

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def difference(self) -> float | None:
        return None if self.mean is None or self.paper is None else self.mean - self.paper.value

    def marks(self) -> str:
        return ((SEEDS_MARK if self.short else "") + (PARTIAL_MARK if self.partial else "")
                + (DRAW_MARK if self.draws else ""))

    def render(self) -> str:
        if self.mean is None:
            ours = "-"
        else:
            spread = f" ± {self.std:.{self.digits}f}" if self.std is not None else ""
            ours = f"{self.text or f'{self.mean:,.{self.digits}f}'}{spread} ({self.n}){self.marks()}"
        if self.paper is None:
            return ours
        paper = f"{self.paper.value:,.{self.digits}f}" + (DOUBT_MARK if self.paper.doubt else "")
        difference = "" if self.difference is None else f" ({self.difference:+,.{self.digits}f})"
        return f"{ours} vs {paper}{difference}"


def _measured(values: dict, *, mean: float | None = None, **where) -> Cell:
    cell = Cell(values=dict(values), **where)
    if values:
        cell.mean = statistics.fmean(values.values()) if mean is None else mean
        cell.std = statistics.stdev(values.values()) if len(values) > 1 else None
    return cell


def column_mean(values: Iterable[float]) -> float:
    """The mean over a row's columns (datasets, tasks, groups): their sum over their number, as the
    mini-world tables have always averaged tasks (seeds are averaged as the store does, `statistics.fmean`)."""
    values = list(values)
    return sum(values) / len(values)


def _mean_of(cells: Sequence[Cell], **where) -> Cell:
    """The mean over ``cells`` (those with runs): the mean of their means; per seed (for the ± and the
    count) over the seeds every one of them has."""
    present = [c for c in cells if c.mean is not None]
    if not present:
        return Cell(**where)
    common = set.intersection(*(set(c.values) for c in present))
    values = {s: column_mean(c.values[s] for c in present) for s in sorted(common)}
    cell = _measured(values, mean=column_mean(c.mean for c in present), **where)
    cell.seed_free = all(c.seed_free for c in present)
    cell.short = any(c.short for c in present)
    cell.runs = tuple(r for c in present for r in c.runs)
    return cell


def _hm_of(base: Cell, new: Cell, per_seed: dict | None = None, **where) -> Cell:
    """HM of the mean Base and the mean New (the papers' rule); its ± the std of the per-seed HMs."""
    if base.mean is None or new.mean is None:
        return Cell(**where)
    if per_seed is None:
        per_seed = {s: harmonic_mean(base.values[s], new.values[s]) for s in base.values if s in new.values}
    cell = _measured(per_seed, mean=harmonic_mean(base.mean, new.mean), **where)
    cell.seed_free, cell.short, cell.runs = base.seed_free and new.seed_free, base.short or new.short, base.runs
    cell.partial = base.partial or new.partial
    return cell


def base_new_average(cells: Sequence[dict]) -> dict[str, float]:
    """Mean Base and mean New over ``cells`` (each {"base", "new"}: one dataset or task) and the HM of
    those two means: the papers' average (CoCoOp and CLIPFit Table 1), not a mean of the HMs."""
    mean = {k: column_mean(c[k] for c in cells) for k in ("base", "new")}
    mean["hm"] = harmonic_mean(mean["base"], mean["new"])
    return mean


def seed_summary(run_seeds: dict[int, dict], keys: Sequence[str]) -> dict[str, dict[str, float]]:
    """{"mean": {key: ...}, "std": {key: ...}} over the seeds' metrics (seed -> metrics.json), as the store
    summarises them: an HM from the mean Base and New, its std over the per-seed HMs; std 0 for one seed."""
    out: dict[str, dict[str, float]] = {"mean": {}, "std": {}}
    for key in keys:
        values = [m[key] for m in run_seeds.values()]
        out["mean"][key] = statistics.fmean(values)
        out["std"][key] = statistics.stdev(values) if len(values) > 1 else 0.0
    if "hm" in keys and "base" in keys and "new" in keys:
        out["mean"]["hm"] = harmonic_mean(out["mean"]["base"], out["mean"]["new"])
    return out


# ---------------------------------------------------------------------------------------------- tables


@dataclass
class Table:
    """One table: ``title``, the headers of its label columns, its value ``columns`` (key, title) and its
    ``rows`` (labels, then one `Cell` per value column), and its footnotes. ``grid`` holds every cell by
    its place while the table is built."""

    kind: str
    title: str
    label_headers: list[str]
    columns: list[tuple[str, str]]
    rows: list[tuple[list[str], list[Cell]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    backbone: tuple[str, str] = ("", "")
    shots: int | None = None
    grid: dict = field(default_factory=dict)
    paper: dict = field(default_factory=dict)
    sources: list[PublishedTable] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)  # base2new: its dataset rows
    row_keys: list[tuple] = field(default_factory=list)  # the others: their (shots, method) rows
    data_columns: list[str] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)  # averaged column -> the columns it averages
    mean_of_groups: str | None = None

    def cells(self) -> list[Cell]:
        return [c for _, cells in self.rows for c in cells]


def _title(name: str) -> str:
    """The dataset's title as the papers' tables print it (its registered title), else its name."""
    try:
        title = data.get_spec(name).title
    except ClipFitError:
        title = ""
    return title or name


def _order(names: Iterable[str], listed: Sequence[str]) -> list[str]:
    rank: dict[str, int] = {}
    for n in listed:
        rank.setdefault(n, len(rank))
    return sorted(set(names), key=lambda n: (rank.get(n, len(rank)), n))


def _method_order(names: Iterable[str]) -> list[str]:
    """Zero-shot first, then the methods' listing order (`clipfit methods`), then any other name."""
    return _order(names, ["zeroshot", *METHODS.names()])


def _backbone_title(backbone: tuple[str, str]) -> str:
    return f"{backbone[0]} ({backbone[1]})"


def _shots_title(shots: int | None) -> str:
    return f", {_shots(shots)}" if shots is not None else ""


def _shots_label(shots: int | None) -> str:
    return f" ({_shots(shots)})" if shots is not None else ""


def _shots(shots: int) -> str:
    return "all training images" if shots == 0 else f"{shots} shot{'' if shots == 1 else 's'}"


def build_tables(runs: Sequence[RunFolder], kinds: Sequence[str] | None = None, *, seeds: int | None = None,
                 compare: str | os.PathLike | Published | None = None) -> list[Table]:
    """The tables of ``runs`` (see the module doc): of ``kinds`` (default: one per protocol present), each
    cell marked against ``seeds`` expected seeds (default: the most any cell of its table has), with the
    published numbers of ``compare`` beside ours. `ClipFitError` for an unknown kind or one without runs."""
    published = compare if isinstance(compare, Published) or compare is None else load_published(compare)
    present = [k for k in PROTOCOL_KINDS if any(r.protocol == k for r in runs)]
    if kinds is None:
        kinds = present
        if not kinds:
            protocols = sorted({r.protocol for r in runs})
            raise ClipFitError(f"no run of a protocol with a table format (runs of: {', '.join(protocols) or 'none'}; "
                               f"formats: {', '.join(PROTOCOL_KINDS)})")
    for kind in kinds:
        if kind not in KINDS:
            raise ClipFitError(f"--kind {kind}: no such table (one of {', '.join(KINDS)})")
        if kind != "efficiency" and kind not in present:
            raise ClipFitError(f"--kind {kind}: none of the {len(runs)} run folders found is of protocol {kind}")
    if seeds is not None and seeds < 1:
        raise ClipFitError(f"--seeds {seeds}: must be a whole number >= 1")
    tables = []
    for kind in kinds:
        chosen = [r for r in runs if kind == "efficiency" or r.protocol == kind]
        for backbone in sorted({r.backbone for r in chosen}):
            mine = [r for r in chosen if r.backbone == backbone]
            for shots, group in ([(None, mine)] if kind in ("few-shot", "efficiency") else _by_shots(mine, kind)):
                table = BUILDERS[kind](group, shots, published)
                table.backbone, table.shots = backbone, shots
                table.title += f": {_backbone_title(backbone)}"
                if kind != "efficiency":
                    _finish(table, group, seeds)
                _source_notes(table, published)
                tables.append(table)
    return tables


def _by_shots(runs: Sequence[RunFolder], kind: str) -> list[tuple[int | None, list[RunFolder]]]:
    """Runs by training shots (and, for a transfer protocol, by source); a method that trains nothing joins
    every group (it has no shots)."""
    groups = []
    sources = _order({r.dataset for r in runs}, data.DATASETS.names()) if kind in TRANSFER_KINDS else [None]
    for source in sources:
        mine = [r for r in runs if source is None or r.dataset == source]
        free = [r for r in mine if r.shots is None]
        shots = sorted({r.shots for r in mine if r.shots is not None})
        groups += [(k, [r for r in mine if r.shots == k] + free) for k in shots] or [(None, free)]
    return groups


TRANSFER_KINDS = ("cross-dataset", "distribution-shift")


def _cell_from(run: RunFolder | None, where: dict, key: str) -> Cell:
    """The cell of ``run``'s per-seed ``key`` at ``where``; an empty cell without a run."""
    if run is None:
        return Cell(**where)
    values = {s: m[key] for s, m in run.seeds.items() if isinstance(m.get(key), (int, float))}
    cell = _measured(values, **where)
    cell.seed_free, cell.runs = run.shots is None, tuple(str(p) for p in run.paths)
    return cell


def _published_cells(published: Published | None, kind: str, shots: int | None) -> tuple[dict, list[PublishedTable]]:
    """The published cells of ``kind`` (and ``shots``), keyed as our cells are: by (method, shots, column,
    metric); a table of runs without shots (zero-shot only) takes the first published table's."""
    if published is None:
        return {}, []
    tables = published.tables_of(kind, None if kind == "few-shot" else shots)
    if kind != "few-shot" and shots is None:
        tables = tables[:1]
    cells: dict = {}
    for t in tables:
        for (method, shots_, column, metric), cell in t.cells.items():
            key = (method, shots if kind != "few-shot" else shots_, column, metric)
            cells.setdefault(key, cell)
    return cells, tables


def _base2new(runs: Sequence[RunFolder], shots: int | None, published: Published | None) -> Table:
    paper, sources = _published_cells(published, "base2new", shots)
    methods = _method_order([r.method for r in runs] + [k[0] for k in paper])
    datasets = _order([r.dataset for r in runs] + [k[2] for k in paper if k[2] != AVERAGE], data.DATASETS.names())
    by = {(r.method, r.dataset): r for r in runs}
    table = Table("base2new", f"Base-to-new generalization{_shots_title(shots)}", ["Dataset", ""],
                  [(m, m) for m in methods], paper=paper, sources=sources)
    grid = table.grid
    for m in methods:
        for d in datasets:
            run = by.get((m, d))
            where = dict(method=m, shots=shots, protocol="base2new", column=d)
            base, new = (_cell_from(run, {**where, "metric": k}, k) for k in ("base", "new"))
            seeds = run.seeds if run else {}
            per_seed = {s: v["hm"] for s, v in seeds.items() if isinstance(v.get("hm"), (int, float))}
            grid[m, d, "base"], grid[m, d, "new"] = base, new
            grid[m, d, "hm"] = _hm_of(base, new, per_seed or None, metric="hm", **where)
    table.datasets = datasets
    return table


def _few_shot(runs: Sequence[RunFolder], shots: int | None, published: Published | None) -> Table:
    paper, sources = _published_cells(published, "few-shot", None)
    order = _method_order([r.method for r in runs] + [k[0] for k in paper])
    rows = sorted({(r.shots, r.method) for r in runs} | {(k[1], k[0]) for k in paper},
                  key=lambda sm: (-1 if sm[0] is None else sm[0], order.index(sm[1])))
    datasets = _order([r.dataset for r in runs] + [k[2] for k in paper if k[2] != AVERAGE], data.DATASETS.names())
    by = {(r.shots, r.method, r.dataset): r for r in runs}
    table = Table("few-shot", "Few-shot accuracy", ["Shots", "Method"], [], paper=paper, sources=sources)
    for shots_, method in rows:
        for d in datasets:
            where = dict(method=method, shots=shots_, column=d, metric="accuracy", protocol="few-shot")
            table.grid[shots_, method, d] = _cell_from(by.get((shots_, method, d)), where, "accuracy")
    _layout(table, rows, datasets, {AVERAGE: datasets})
    return table


def _transfer(kind: str, title: str):
    def build(runs: Sequence[RunFolder], shots: int | None, published: Published | None) -> Table:
        paper, sources = _published_cells(published, kind, shots)
        source = runs[0].dataset
        targets: list[str] = []
        for r in runs:
            targets += [t for t in r.targets if t not in targets]
        targets += [k[2] for k in paper if k[2] not in (*targets, source, AVERAGE)]
        rows = [(shots, m) for m in _method_order([r.method for r in runs] + [k[0] for k in paper])]
        table = Table(kind, f"{title}{_shots_title(shots)}", ["Method"], [], paper=paper, sources=sources)
        by = {r.method: r for r in runs}
        for shots_, method in rows:
            for column in (source, *targets):
                where = dict(method=method, shots=shots_, column=column, metric="accuracy", protocol=kind)
                table.grid[shots_, method, column] = _cell_from(by.get(method), where, column)
        groups = {AVERAGE: targets}
        for t in sources:  # a published average over other columns (Table 3: source and targets) gets its own
            over = list(t.averages.get(AVERAGE, ()))
            if over and set(over) != set(targets):
                groups[f"{AVERAGE}:{t.key}"] = over
        _layout(table, rows, [source, *targets], groups)
        table.columns[0] = (source, f"{_title(source)} (source)")
        return table

    return build


def _vtab(runs: Sequence[RunFolder], shots: int | None, published: Published | None) -> Table:
    paper, sources = _published_cells(published, "vtab", shots)
    canonical = list(data.VTAB_TASKS)
    tasks = _order([r.dataset for r in runs] + [k[2] for k in paper if k[2].startswith("vtab-")], canonical)
    rows = [(shots, m) for m in _method_order([r.method for r in runs] + [k[0] for k in paper])]
    by = {(r.method, r.dataset): r for r in runs}
    table = Table("vtab", f"VTAB-1k{_shots_title(shots)}", ["Method"], [], paper=paper, sources=sources)
    for shots_, method in rows:
        for task in tasks:
            where = dict(method=method, shots=shots_, column=task, metric="accuracy", protocol="vtab")
            table.grid[shots_, method, task] = _cell_from(by.get((method, task)), where, "accuracy")
    groups = {g: list(names) for g, names in VTAB_GROUPS.items()}
    _layout(table, rows, tasks, groups, mean_of_groups="mean")
    return table


def _layout(table: Table, rows: list[tuple], columns: list[str], groups: dict[str, list[str]],
            mean_of_groups: str | None = None) -> None:
    """Columns of a table with a row per (shots, method): the data columns, then the averaged ones."""
    titles = {AVERAGE: "Average", **VTAB_GROUP_TITLES}
    for key, over in groups.items():
        if key.startswith(f"{AVERAGE}:"):
            titles[key] = f"Average of {', '.join(_title(c) for c in over)} (as {key.split(':')[1]})"
    table.columns = [(c, _title(c)) for c in columns] + [(k, titles.get(k, k)) for k in groups]
    if mean_of_groups:
        table.columns.append((mean_of_groups, titles.get(mean_of_groups, mean_of_groups)))
    table.row_keys, table.data_columns, table.groups, table.mean_of_groups = rows, columns, groups, mean_of_groups


def _efficiency(runs: Sequence[RunFolder], shots: int | None, published: Published | None) -> Table:
    paper, sources = _published_cells(published, "efficiency", None)
    protocols = {t.protocol for t in sources}
    order = _method_order([r.method for r in runs] + [k[0] for k in paper])
    rank = {p: i for i, p in enumerate(PROTOCOL_KINDS)}
    keys = sorted({(r.method, r.protocol) for r in runs} | {(k[0], p) for k in paper for p in protocols},
                  key=lambda mp: (order.index(mp[0]), rank.get(mp[1], len(rank)), mp[1]))
    table = Table("efficiency", "Trainable parameters and seconds per seed run", ["Method", "Protocol"],
                  [("trainable_parameters", "Trainable parameters"), ("seconds", "Seconds per seed run")],
                  paper=paper, sources=sources)
    for method, protocol in keys:
        mine = [r for r in runs if r.method == method and r.protocol == protocol]
        where = dict(method=method, shots=None, protocol=protocol)
        params = {(str(r.path), s): m["trainable_parameters"] for r in mine for s, m in r.seeds.items()
                  if isinstance(m.get("trainable_parameters"), int)}
        seconds = {(str(r.path), s): m["seconds"] for r in mine for s, m in r.seeds.items()
                   if isinstance(m.get("seconds"), (int, float))}
        p = _measured(params, column="trainable_parameters", metric="trainable_parameters", digits=0, **where)
        p.std = None  # a count, the same for every seed of a run
        if params and min(params.values()) != max(params.values()):
            p.text = f"{min(params.values()):,}-{max(params.values()):,}"
        t = _measured(seconds, column="seconds", metric="seconds", digits=1, **where)
        for cell in (p, t):
            cell.seed_free, cell.runs = True, tuple(str(r.path) for r in mine)
            if protocol in protocols:
                cell.paper = paper.get((method, None, cell.column, cell.column))
        table.rows.append(([method, protocol], [p, t]))
    table.notes.append("Trainable parameters: as each run counted them (a range where its runs differ); seconds: "
                       "training and evaluation of one seed, mean ± std over every seed run (their number).")
    if sources:
        table.notes.append(f"The paper's training time is per image ({sources[0].title}), ours per seed run: "
                           "not compared.")
    return table


BUILDERS = {
    "base2new": _base2new,
    "few-shot": _few_shot,
    "cross-dataset": _transfer("cross-dataset", "Cross-dataset transfer"),
    "distribution-shift": _transfer("distribution-shift", "Distribution shift"),
    "vtab": _vtab,
    "efficiency": _efficiency,
}


def _finish(table: Table, runs: Sequence[RunFolder], seeds: int | None) -> None:
    """Seed marks, averages, draw marks, published numbers and footnotes, in that order (an average is
    marked when a cell it averages is)."""
    measured = [c for c in table.grid.values() if c.mean is not None and not c.seed_free]
    expected = max([c.n for c in measured] + [seeds or 0])
    short = [c for c in measured if c.n < expected]
    for c in short:
        c.short = True
    if table.kind == "base2new":
        _finish_base2new(table)
    else:
        _finish_by_method(table)
    draws = _draw_notes(table, runs)
    _attach_paper(table)
    if table.kind == "base2new":
        notes = ["Each cell: mean ± std over seeds (their number); HM: the HM of the mean Base and the mean New, "
                 "± the std of the per-seed HMs; Average: the mean Base and the mean New over the datasets and the "
                 "HM of those two means (CoCoOp and CLIPFit Table 1)."]
    elif table.kind == "vtab":
        notes = ["Each cell: mean ± std over seeds (their number); Natural / Specialized / Structured: the mean "
                 "over the group's tasks; Mean: the mean of the three group means."]
    else:
        what = "targets" if table.kind in TRANSFER_KINDS else "datasets"
        notes = [f"Each cell: mean ± std over seeds (their number); Average: the mean over the {what}."]
    if short:
        names = "; ".join(f"{_cell_name(c)}: seed{'s' if c.n > 1 else ''} {' '.join(map(str, c.values))}"
                          for c in short if c.metric != "hm")
        notes.append(f"{SEEDS_MARK} fewer seeds than {expected}, and every average over them: {names}.")
    free = sorted({c.method for c in table.grid.values() if c.seed_free and c.mean is not None and c.n < expected})
    if free:
        notes.append(f"{', '.join(free)} trains nothing: its numbers depend on no seed, so one seed is its whole "
                     "result (not marked).")
    partial = {}
    for c in table.cells():
        if c.partial:
            partial.setdefault((c.method, c.shots, c.column), c.partial)
    if partial:
        columns = dict(table.columns)
        notes.append(f"{PARTIAL_MARK} averaged over the columns that have runs, not all the table shows: "
                     + "; ".join(f"{m}{_shots_label(s) if table.kind == 'few-shot' else ''} "
                                 f"{columns.get(col, 'Average')}: {why}" for (m, s, col), why in partial.items())
                     + ".")
    notes += draws
    for run in runs:
        notes += run.notes
    table.notes = notes + table.notes


def _cell_name(c: Cell) -> str:
    metric = f" {METRIC_TITLES[c.metric]}" if c.metric in METRIC_TITLES else ""
    shots = _shots_label(c.shots) if c.protocol == "few-shot" else ""
    return f"{c.method}{shots} on {_title(c.column)}{metric}"


def _missing(over: Sequence[str], have: Iterable[str]) -> str | None:
    have = set(have)
    lacking = [c for c in over if c not in have]
    if not lacking:
        return None
    return f"{len(over) - len(lacking)} of {len(over)} (no {', '.join(_title(c) for c in lacking)})"


def _finish_base2new(table: Table) -> None:
    grid, datasets = table.grid, table.datasets
    methods = [key for key, _ in table.columns]
    for m in methods:
        where = dict(method=m, shots=table.shots, protocol="base2new", column=AVERAGE)
        base = _mean_of([grid[m, d, "base"] for d in datasets], metric="base", **where)
        new = _mean_of([grid[m, d, "new"] for d in datasets], metric="new", **where)
        if base.mean is not None:
            have = [d for d in datasets if grid[m, d, "base"].mean is not None]
            base.partial = new.partial = _missing(datasets, have)
        grid[m, AVERAGE, "base"], grid[m, AVERAGE, "new"] = base, new
        grid[m, AVERAGE, "hm"] = _hm_of(base, new, metric="hm", **where)
    for d in [AVERAGE, *datasets]:
        for metric in B2N_METRICS:
            label = ("Average" if d == AVERAGE else _title(d)) if metric == "base" else ""
            table.rows.append(([label, METRIC_TITLES[metric]], [grid[m, d, metric] for m in methods]))


def _finish_by_method(table: Table) -> None:
    grid = table.grid
    for shots, method in table.row_keys:
        have = [c for c in table.data_columns if grid[shots, method, c].mean is not None]
        group_cells = []
        for key, over in table.groups.items():
            where = dict(method=method, shots=shots, column=key, metric="accuracy", protocol=table.kind)
            cell = _mean_of([grid[shots, method, c] for c in over if (shots, method, c) in grid], **where)
            if cell.mean is not None:
                cell.partial = _missing(over, have)
            grid[shots, method, key] = cell
            group_cells.append(cell)
        if table.mean_of_groups:
            where = dict(method=method, shots=shots, column=table.mean_of_groups, metric="accuracy",
                         protocol=table.kind)
            cell = _mean_of(group_cells, **where)
            lacking = [VTAB_GROUP_TITLES.get(k, k) for k, g in zip(table.groups, group_cells)
                       if g.partial or g.mean is None]
            if cell.mean is not None and lacking:
                cell.partial = f"incomplete groups: {', '.join(lacking)}"
            grid[shots, method, table.mean_of_groups] = cell
        labels = [method] if table.label_headers == ["Method"] else ["0" if shots is None else str(shots), method]
        table.rows.append((labels, [grid[shots, method, key] for key, _ in table.columns]))


def _draw_notes(table: Table, runs: Sequence[RunFolder]) -> list[str]:
    """Mark the cells whose runs drew other training images than another run of the same dataset, shots and
    seed (their per-seed ``fewshot_sha256`` differ), and name those runs in a footnote."""
    draws: dict[tuple, dict[str, list[tuple[RunFolder, dict]]]] = {}
    for run in runs:
        for seed, metrics in run.seeds.items():
            digest = metrics.get("fewshot_sha256")
            if digest and run.shots is not None:
                draws.setdefault((run.dataset, run.shots, seed), {}).setdefault(digest, []).append((run, metrics))
    notes = []
    for (dataset, shots, seed), by_digest in sorted(draws.items(), key=str):
        if len(by_digest) < 2:
            continue
        named = []
        for digest, holders in by_digest.items():
            for run, _ in holders:
                named.append(f"{run.method} ({run.paths[0]}: {digest[:12]})")
                for cell in table.cells():
                    if cell.method == run.method and cell.shots == run.shots and (
                            cell.column == dataset or table.kind in TRANSFER_KINDS):
                        cell.draws = True
        splits = {m.get("split_sha256") for holders in by_digest.values() for _, m in holders} - {None}
        why = "; their split files differ too" if len(splits) > 1 else ""
        notes.append(f"{DRAW_MARK} {_title(dataset)}, {_shots(shots)}, seed {seed}: the runs drew different training "
                     f"images: {', '.join(named)}{why}.")
    return notes


def _attach_paper(table: Table) -> None:
    separate = any(k.startswith(f"{AVERAGE}:") for k, _ in table.columns)
    for cell in table.cells():
        if cell.column == AVERAGE and separate:
            continue  # the paper's average is over other columns: it stands beside that column instead
        column = AVERAGE if cell.column.startswith(f"{AVERAGE}:") else cell.column
        cell.paper = table.paper.get((cell.method, cell.shots, column, cell.metric))


def _alnum(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _source_notes(table: Table, published: Published | None) -> None:
    if published is None:
        return
    if not table.sources:
        table.notes.append(f"{published.name} has no {table.kind} table{_shots_label(table.shots)} to compare with.")
        return
    titles = "; ".join(f"{t.title}, {t.where}" for t in table.sources)
    table.notes.append(f"Beside each cell: {published.name}'s number ({titles}; {published.cite()}) and, in brackets, "
                       "our mean minus it; '-': no run of ours.")
    backbone = published.source.get("backbone", "")
    if _alnum(table.backbone[0]) not in _alnum(backbone):
        table.notes.append(f"These runs are on {_backbone_title(table.backbone)}, the paper's on {backbone}.")
    doubts = {}
    for c in table.cells():
        if c.paper is not None and c.paper.doubt:
            metric = f" {METRIC_TITLES[c.metric]}" if c.metric in METRIC_TITLES else ""
            name = "Average" if c.column == AVERAGE else _title(c.column)
            doubts.setdefault(f"{c.paper.printed_method} {name}{metric}", c.paper.doubt)
    if doubts:
        table.notes.append(f"{DOUBT_MARK} the paper's number does not check against its own table (kept as printed): "
                           + "; ".join(f"{k}: {why}" for k, why in doubts.items()) + ".")
    for t in table.sources:
        table.notes += [f"{t.title.split(':')[0]}: {n}" for n in t.notes]


# ---------------------------------------------------------------------------------------------- output


def to_markdown(tables: Sequence[Table]) -> str:
    """The tables as Markdown: a heading, the grid, and its footnotes, for each."""
    blocks = []
    for table in tables:
        header = [*table.label_headers, *(title for _, title in table.columns)]
        lines = [f"### {table.title}", "", "| " + " | ".join(header) + " |",
                 "|" + "---|" * len(table.label_headers) + "---:|" * len(table.columns)]
        for labels, cells in table.rows:
            lines.append("| " + " | ".join([*labels, *("" if c is None else c.render() for c in cells)]) + " |")
        if table.notes:
            lines.append("")
            lines += [f"- {note}" for note in table.notes]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


CSV_FIELDS = ("table", "kind", "model", "pretrained", "protocol", "shots", "method", "column", "metric", "mean",
              "std", "seeds", "marks", "partial", "paper", "paper_doubt", "difference", "runs")


def to_csv(tables: Sequence[Table]) -> str:
    """The tables as one CSV: a row per cell (see CSV_FIELDS), numbers unrounded, marks as in the Markdown."""
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for table in tables:
        for cell in table.cells():
            writer.writerow({
                "table": table.title, "kind": table.kind, "model": table.backbone[0], "pretrained": table.backbone[1],
                "protocol": cell.protocol, "shots": "" if cell.shots is None else cell.shots, "method": cell.method,
                "column": cell.column, "metric": cell.metric,
                "mean": "" if cell.mean is None else repr(cell.mean),
                "std": "" if cell.std is None else repr(cell.std), "seeds": cell.n, "marks": cell.marks(),
                "partial": cell.partial or "", "paper": "" if cell.paper is None else repr(cell.paper.value),
                "paper_doubt": (cell.paper.doubt or "") if cell.paper else "",
                "difference": "" if cell.difference is None else repr(cell.difference), "runs": " ".join(cell.runs),
            })
    return out.getvalue()


def render_table(run_dirs: Iterable[str | os.PathLike], kind: str | Sequence[str] | None = None, fmt: str = "md", *,
                 seeds: int | None = None, compare: str | None = None) -> str:
    """The tables of the run folders in or under ``run_dirs`` as Markdown (``fmt="md"``) or CSV (``"csv"``).

    ``kind``: one of `KINDS` or a list of them (default: one table per protocol present); ``seeds``: mark the
    cells with fewer seeds (default: fewer than the most any cell of the table has); ``compare``: a
    published table set (`clipfit.published.published_names`, or a YAML path) to print beside ours.
    `ClipFitError` for a path without run folders, a damaged file (naming it), two settings for one cell, an
    unknown kind or format."""
    if fmt not in FORMATS:
        raise ClipFitError(f"--format {fmt}: one of {', '.join(FORMATS)}")
    kinds = [kind] if isinstance(kind, str) else (list(kind) if kind is not None else None)
    tables = build_tables(load_runs(run_dirs), kinds, seeds=seeds, compare=compare)
    return to_markdown(tables) if fmt == "md" else to_csv(tables)
