"""Tables from run folders (`clipfit.tables`, `clipfit table RUNS`) and the published numbers they are
compared with (`clipfit.published`).

Run folders are written as the store writes them: `store.summarize` for summary.json, a seed's config for
config.json, and the metrics a run records; one module fixture makes real tiny runs with the mini CLIP.
Every expected number below is worked out by hand from the inputs (given in the test).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import pytest

from clipfit.config import OptimConfig, RunConfig
from clipfit.errors import ClipFitError
from clipfit.published import load_published
from clipfit.store import seed_config, summarize
from clipfit.tables import VTAB_GROUPS, render_table

ELEVEN = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
          "sun397", "dtd", "eurosat", "ucf101"]
TEN = ELEVEN[1:]


def write_run(root: Path, name: str, *, method: str, dataset: str, seeds: dict[int, dict], protocol: str = "base2new",
              shots: int = 16, model: str = "ViT-B-16", pretrained: str = "openai", targets: list[str] | None = None,
              draw: str | None = None, epochs: int = 5, parameters: int = 46080, seconds: float = 10.0) -> Path:
    """A finished run folder: seedN/config.json + metrics.json and summary.json, in the store's format. A
    base-to-new seed's metrics give base and new; its hm is worked out here, as the runner records it."""
    out = root / name
    config = RunConfig(method=method, model=model, pretrained=pretrained, dataset=dataset,
                       data_root=str(root / "data"), protocol=protocol, shots=shots, seeds=sorted(seeds),
                       targets=targets, out=str(out), optim=OptimConfig(epochs=epochs))
    per_seed = []
    for seed, given in seeds.items():
        metrics = {k: float(v) for k, v in given.items()}
        if protocol == "base2new":
            metrics["hm"] = 2 * metrics["base"] * metrics["new"] / (metrics["base"] + metrics["new"])
        metrics.update(seed=seed, recipe=2, weights="openai", trainable_parameters=parameters,
                       final_train_loss=0.5, seconds=seconds, config_sha256="0" * 64, adapter_sha256="1" * 64,
                       fewshot_sha256=None if method == "zeroshot" else (draw or f"draw-{dataset}-{shots}-{seed}"),
                       split_sha256=f"split-{dataset}")
        folder = out / f"seed{seed}"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(seed_config(config, seed).to_json())
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
        per_seed.append(metrics)
    (out / "summary.json").write_text(json.dumps(summarize(config, per_seed), indent=2))
    return out


def b2n(*pairs: tuple[float, float]) -> dict[int, dict]:
    return {seed: {"base": b, "new": n} for seed, (b, n) in enumerate(pairs, start=1)}


def acc(*values: float) -> dict[int, dict]:
    return {seed: {"accuracy": v} for seed, v in enumerate(values, start=1)}


def row(markdown: str, *labels: str) -> list[str]:
    """The cells of the Markdown row whose first cells are ``labels``."""
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[: len(labels)] == list(labels):
            return cells[len(labels):]
    raise AssertionError(f"no row {labels} in\n{markdown}")


def rows_after(markdown: str, label: str, count: int) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    start = next(i for i, line in enumerate(lines) if line.split("|")[1].strip() == label)
    return [[c.strip() for c in line.strip().strip("|").split("|")][2:] for line in lines[start: start + count]]


def header(markdown: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith("|"))
    return [c.strip() for c in line.strip().strip("|").split("|")]


# ------------------------------------------------------------------------------------------ base-to-new


@pytest.fixture
def b2n_runs(tmp_path: Path) -> Path:
    # EuroSAT: Base 59, 60, 61 (mean 60, std 1), New 40 x 3: HM(60, 40) = 48.
    # DTD: Base 90 x 3, New 44, 45, 46 (mean 45, std 1): HM(90, 45) = 60.
    # Average: mean Base 75, mean New 42.5, HM = 2 * 75 * 42.5 / 117.5 = 54.2553 (the mean of the two HMs
    # would be 54.00).
    write_run(tmp_path, "eurosat-clipfit", method="clipfit", dataset="eurosat", seeds=b2n((59, 40), (60, 40), (61, 40)))
    write_run(tmp_path, "dtd-clipfit", method="clipfit", dataset="dtd", seeds=b2n((90, 44), (90, 45), (90, 46)))
    # Zero-shot: one seed, the same on every seed; EuroSAT only: its Average is over 1 of 2 datasets.
    write_run(tmp_path, "eurosat-zeroshot", method="zeroshot", dataset="eurosat", seeds=b2n((50, 60)))
    return tmp_path


def test_base_to_new_cells_are_mean_and_std_over_seeds_with_the_seed_count(b2n_runs):
    markdown = render_table([b2n_runs])
    assert header(markdown) == ["Dataset", "", "zeroshot", "clipfit"]  # zero-shot first, as the papers' CLIP
    eurosat = rows_after(markdown, "EuroSAT", 3)
    assert eurosat[0] == ["50.00 (1)", "60.00 ± 1.00 (3)"]
    assert eurosat[1] == ["60.00 (1)", "40.00 ± 0.00 (3)"]
    # HM(50, 60) = 54.5454; the per-seed HMs 47.677 / 48 / 48.317 have std 0.320
    assert eurosat[2] == ["54.55 (1)", "48.00 ± 0.32 (3)"]
    # DTD: HM of the means HM(90, 45) = 60; per-seed HMs 59.104 / 60 / 60.882, std 0.889
    assert rows_after(markdown, "DTD", 3)[2][1] == "60.00 ± 0.89 (3)"


def test_the_average_row_is_the_hm_of_the_mean_base_and_the_mean_new(b2n_runs):
    average = rows_after(render_table([b2n_runs]), "Average", 3)
    # Mean Base over EuroSAT and DTD 75 (per seed 74.5 / 75 / 75.5: std 0.5), mean New 42.5 (42 / 42.5 / 43)
    assert average[0][1] == "75.00 ± 0.50 (3)"
    assert average[1][1] == "42.50 ± 0.50 (3)"
    # HM(75, 42.5) = 54.255, not (48 + 60) / 2 = 54.00; ± over the per-seed HMs of the seed's means: 0.538
    assert average[2][1] == "54.26 ± 0.54 (3)"
    # Zero-shot ran EuroSAT only: its average is marked as over 1 of the 2 datasets, not silently.
    assert average[0][0] == "50.00 (1)‡"
    assert "‡ averaged over the columns that have runs" in render_table([b2n_runs])


def test_a_cell_with_fewer_seeds_is_marked_and_so_is_every_average_over_it(b2n_runs):
    write_run(b2n_runs, "ucf-clipfit", method="clipfit", dataset="ucf101", seeds=b2n((70, 50), (72, 52)))
    markdown = render_table([b2n_runs])
    assert rows_after(markdown, "UCF101", 1)[0][1] == "71.00 ± 1.41 (2)*"  # std of 70, 72: sqrt(2)
    assert rows_after(markdown, "Average", 1)[0][1].endswith("*")
    assert "* fewer seeds than 3, and every average over them: clipfit on UCF101 Base: seeds 1 2" in markdown
    # Zero-shot's single seed is its whole result: not marked.
    assert rows_after(markdown, "EuroSAT", 1)[0][0] == "50.00 (1)"


def test_seeds_n_marks_every_cell_with_fewer(b2n_runs):
    markdown = render_table([b2n_runs], seeds=5)
    assert rows_after(markdown, "EuroSAT", 1)[0][1] == "60.00 ± 1.00 (3)*"
    assert "fewer seeds than 5" in markdown


def test_csv_has_a_row_per_cell_that_parses_back(b2n_runs):
    rows = list(csv.DictReader(io.StringIO(render_table([b2n_runs], fmt="csv"))))
    cell = next(r for r in rows if (r["method"], r["column"], r["metric"]) == ("clipfit", "average", "hm"))
    assert float(cell["mean"]) == pytest.approx(2 * 75 * 42.5 / 117.5)
    assert (cell["kind"], cell["model"], cell["pretrained"], cell["shots"], cell["seeds"]) == (
        "base2new", "ViT-B-16", "openai", "16", "3")
    base = next(r for r in rows if (r["method"], r["column"], r["metric"]) == ("clipfit", "eurosat", "base"))
    assert float(base["mean"]) == 60.0 and float(base["std"]) == pytest.approx(1.0)
    assert base["runs"].endswith("eurosat-clipfit")
    zero = next(r for r in rows if (r["method"], r["column"], r["metric"]) == ("zeroshot", "average", "base"))
    assert zero["marks"] == "‡" and zero["partial"].startswith("1 of 2")


# ------------------------------------------------------------------------------------------ other protocols


def test_few_shot_rows_by_shots_and_the_mean_over_datasets(tmp_path):
    write_run(tmp_path, "a1", method="clipfit", dataset="eurosat", protocol="few-shot", shots=1, seeds=acc(70, 72))
    write_run(tmp_path, "b1", method="clipfit", dataset="dtd", protocol="few-shot", shots=1, seeds=acc(50, 52))
    write_run(tmp_path, "a16", method="clipfit", dataset="eurosat", protocol="few-shot", shots=16, seeds=acc(90, 90))
    write_run(tmp_path, "z", method="zeroshot", dataset="eurosat", protocol="few-shot", seeds=acc(48))
    markdown = render_table([tmp_path])
    assert header(markdown) == ["Shots", "Method", "DTD", "EuroSAT", "Average"]
    assert row(markdown, "0", "zeroshot") == ["-", "48.00 (1)", "48.00 (1)‡"]
    assert row(markdown, "1", "clipfit") == ["51.00 ± 1.41 (2)", "71.00 ± 1.41 (2)", "61.00 ± 1.41 (2)"]
    assert row(markdown, "16", "clipfit") == ["-", "90.00 ± 0.00 (2)", "90.00 ± 0.00 (2)‡"]


def test_cross_dataset_shows_source_targets_and_the_targets_mean(tmp_path):
    # Targets 60, 70, 80 on seed 1 and 62, 72, 82 on seed 2: each seed's mean 70 / 72, mean 71, std 1.41.
    seeds = {1: {"imagenet": 71.0, "caltech101": 60.0, "dtd": 70.0, "eurosat": 80.0, "average": 70.0},
             2: {"imagenet": 73.0, "caltech101": 62.0, "dtd": 72.0, "eurosat": 82.0, "average": 72.0}}
    write_run(tmp_path, "x", method="clipfit", dataset="imagenet", protocol="cross-dataset", seeds=seeds,
              targets=["caltech101", "dtd", "eurosat"])
    markdown = render_table([tmp_path])
    assert header(markdown) == ["Method", "ImageNet (source)", "Caltech101", "DTD", "EuroSAT", "Average"]
    assert row(markdown, "clipfit") == ["72.00 ± 1.41 (2)", "61.00 ± 1.41 (2)", "71.00 ± 1.41 (2)",
                                        "81.00 ± 1.41 (2)", "71.00 ± 1.41 (2)"]


def test_distribution_shift_compared_with_table_3_averages_as_the_paper_does(tmp_path):
    # Table 3's Average is over ImageNet, -V2 and -Sketch (CLIPFit: 61.74); ours over the targets.
    # Ours: ImageNet 72, V2 65, Sketch 49, A 50, R 78: targets' mean (65 + 49 + 50 + 78) / 4 = 60.5; the
    # paper's average of ours (72 + 65 + 49) / 3 = 62.0, minus 61.74 = +0.26.
    seeds = {s: {"imagenet": 72.0, "imagenet_v2": 65.0, "imagenet_sketch": 49.0, "imagenet_a": 50.0,
                 "imagenet_r": 78.0, "average": 60.5} for s in (1, 2, 3)}
    write_run(tmp_path, "d", method="clipfit", dataset="imagenet", protocol="distribution-shift", seeds=seeds,
              targets=["imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"])
    markdown = render_table([tmp_path], compare="clipfit-paper")
    columns = header(markdown)
    assert columns[:2] == ["Method", "ImageNet (source)"] and columns[-2] == "Average"
    assert columns[-1].startswith("Average of ImageNet") and "(as table3)" in columns[-1]
    cells = dict(zip(columns[1:], row(markdown, "clipfit")))
    assert cells["ImageNet (source)"] == "72.00 ± 0.00 (3) vs 71.53 (+0.47)"
    assert cells["Average"] == "60.50 ± 0.00 (3)"  # no published number: it is another average
    assert cells[columns[-1]] == "62.00 ± 0.00 (3) vs 61.74 (+0.26)"
    assert row(markdown, "zeroshot")[0] == "- vs 66.73"  # CLIP's published row, no run of ours


def test_vtab_group_means_and_their_mean(tmp_path):
    # Natural tasks 70 each, Specialized 80, Structured 40: Mean (70 + 80 + 40) / 3 = 63.33 (the mean over
    # the 19 tasks would be (7 * 70 + 4 * 80 + 8 * 40) / 19 = 59.47).
    values = {"natural": 70, "specialized": 80, "structured": 40}
    for group, tasks in VTAB_GROUPS.items():
        for task in tasks:
            write_run(tmp_path, task, method="clipfit", dataset=task, protocol="vtab",
                      seeds=acc(values[group], values[group]))
    markdown = render_table([tmp_path])
    columns = header(markdown)
    assert len(columns) == 1 + 19 + 4 and columns[-4:] == ["Natural", "Specialized", "Structured", "Mean"]
    assert row(markdown, "clipfit")[-4:] == ["70.00 ± 0.00 (2)", "80.00 ± 0.00 (2)", "40.00 ± 0.00 (2)",
                                             "63.33 ± 0.00 (2)"]


def test_vtab_group_with_tasks_not_run_is_marked(tmp_path):
    write_run(tmp_path, "c", method="clipfit", dataset="vtab-cifar100", protocol="vtab", seeds=acc(50))
    write_run(tmp_path, "d", method="clipfit", dataset="vtab-dtd", protocol="vtab", seeds=acc(70))
    write_run(tmp_path, "e", method="clipfit", dataset="vtab-eurosat", protocol="vtab", seeds=acc(90))
    markdown = render_table([tmp_path])
    natural, specialized, structured, mean = row(markdown, "clipfit")[-4:]
    assert natural == "60.00 (1)‡" and specialized == "90.00 (1)‡" and structured == "-"
    assert mean == "75.00 (1)‡"
    assert "Natural: 2 of 7 (no" in markdown


def test_efficiency_table_gives_trainable_parameters_and_seconds(tmp_path):
    write_run(tmp_path, "a", method="clipfit", dataset="eurosat", seeds=b2n((60, 40), (60, 40)), seconds=10.0)
    write_run(tmp_path, "b", method="clipfit", dataset="dtd", seeds=b2n((60, 40), (60, 40)), seconds=14.0)
    markdown = render_table([tmp_path], kind="efficiency", compare="clipfit-paper")
    # 4 seed runs of 10, 10, 14, 14 s: mean 12, std 2.31; the paper prints 44k for CLIPFit (Table 7)
    assert row(markdown, "clipfit", "base2new") == ["46,080 (4) vs 44,000 (+2,080)", "12.0 ± 2.3 (4)"]


# ------------------------------------------------------------------------------------------ draws, merging


def test_cells_that_drew_other_images_for_the_same_seed_get_a_footnote_naming_them(tmp_path):
    write_run(tmp_path, "machine-a/clipfit", method="clipfit", dataset="eurosat", seeds=b2n((60, 40)), draw="a" * 64)
    write_run(tmp_path, "machine-b/coop", method="coop", dataset="eurosat", seeds=b2n((62, 30)), draw="b" * 64)
    write_run(tmp_path, "machine-a/dtd", method="coop", dataset="dtd", seeds=b2n((62, 30)))
    markdown = render_table([tmp_path])
    eurosat = rows_after(markdown, "EuroSAT", 1)[0]
    assert all(cell.endswith("†") for cell in eurosat)
    assert not rows_after(markdown, "DTD", 1)[0][1].endswith("†")
    note = next(line for line in markdown.splitlines() if line.startswith("- †"))
    assert "EuroSAT, 16 shots, seed 1" in note
    assert f"clipfit ({tmp_path / 'machine-a/clipfit'}: aaaaaaaaaaaa)" in note
    assert f"coop ({tmp_path / 'machine-b/coop'}: bbbbbbbbbbbb)" in note


def test_seeds_of_one_setting_run_in_two_folders_are_merged(tmp_path):
    write_run(tmp_path, "a/eurosat", method="clipfit", dataset="eurosat", seeds=b2n((59, 40)))
    write_run(tmp_path, "b/eurosat", method="clipfit", dataset="eurosat", seeds={2: {"base": 61.0, "new": 40.0}})
    assert rows_after(render_table([tmp_path / "a", tmp_path / "b"]), "EuroSAT", 1)[0] == ["60.00 ± 1.41 (2)"]


def test_a_run_folder_without_its_summary_is_read_from_its_seed_folders(tmp_path):
    run = write_run(tmp_path, "a", method="clipfit", dataset="eurosat", seeds=b2n((59, 40), (61, 40)))
    with_summary = render_table([tmp_path])
    (run / "summary.json").unlink()
    assert render_table([tmp_path]) == with_summary


def test_two_settings_for_one_cell_are_refused_naming_both_folders(tmp_path):
    write_run(tmp_path, "a", method="clipfit", dataset="eurosat", seeds=b2n((59, 40)), epochs=5)
    write_run(tmp_path, "b", method="clipfit", dataset="eurosat", seeds=b2n((61, 40)), epochs=50)
    with pytest.raises(ClipFitError, match=r"/a and .*/b: two settings of clipfit on eurosat .* in optim.epochs"):
        render_table([tmp_path])


def test_a_folder_without_runs_and_a_damaged_summary_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipFitError, match="empty: holds no run folder"):
        render_table([tmp_path / "empty"])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "summary.json").write_text("{")
    with pytest.raises(ClipFitError, match=r"broken/summary.json: damaged, not valid JSON"):
        render_table([tmp_path / "broken"])
    with pytest.raises(ClipFitError, match="--kind vtab: none of the"):
        write_run(tmp_path, "r", method="clipfit", dataset="dtd", seeds=b2n((60, 40)))
        render_table([tmp_path / "r"], kind="vtab")


# ------------------------------------------------------------------------------------------ --compare


def test_compare_prints_the_papers_number_and_our_difference_and_dash_for_cells_we_lack(tmp_path):
    # CLIPFit EuroSAT in Table 1: 93.33 / 71.07 / 80.69. Ours: 94 / 70 -> HM 2 * 94 * 70 / 164 = 80.2439.
    write_run(tmp_path, "e", method="clipfit", dataset="eurosat", seeds=b2n((94, 70), (94, 70), (94, 70)))
    markdown = render_table([tmp_path], compare="clipfit-paper")
    # Table 1's methods beside ours, zero-shot first, then in the listing order of `clipfit methods`
    assert header(markdown)[2:] == ["zeroshot", "clipfit", "coop", "kgcoop", "cocoop", "maple", "clip-adapter"]
    base, new, hm = rows_after(markdown, "EuroSAT", 3)
    assert base[1] == "94.00 ± 0.00 (3) vs 93.33 (+0.67)"
    assert new[1] == "70.00 ± 0.00 (3) vs 71.07 (-1.07)"
    assert hm[1] == "80.24 ± 0.00 (3) vs 80.69 (-0.45)"
    assert base[2] == "- vs 92.19"  # CoOp's published EuroSAT Base, no run of ours
    assert rows_after(markdown, "Average", 1)[0][1] == "94.00 ± 0.00 (3)‡ vs 83.72 (+10.28)"
    # Every dataset of Table 1 has its rows, and the doubtful printed cells say so.
    assert rows_after(markdown, "StanfordCars", 2)[1][4] == "- vs 68.87?"
    assert "? the paper's number does not check" in markdown and "CoCoOp StanfordCars New" in markdown
    rows = list(csv.DictReader(io.StringIO(render_table([tmp_path], fmt="csv", compare="clipfit-paper"))))
    cell = next(r for r in rows if (r["method"], r["column"], r["metric"]) == ("clipfit", "eurosat", "new"))
    assert float(cell["paper"]) == 71.07 and float(cell["difference"]) == pytest.approx(70 - 71.07)


def test_compare_few_shot_uses_tables_10_and_2(tmp_path):
    write_run(tmp_path, "f", method="coop", dataset="dtd", protocol="few-shot", shots=2, seeds=acc(50, 50, 50))
    markdown = render_table([tmp_path], compare="clipfit-paper")
    cells = dict(zip(header(markdown)[2:], row(markdown, "2", "coop")))
    assert cells["DTD"] == "50.00 ± 0.00 (3)"  # Table 10's 2-shot CoOp DTD is lost in the text: nothing beside
    assert cells["EuroSAT"] == "- vs 61.20"
    assert cells["Average"] == "50.00 ± 0.00 (3)‡ vs 70.13 (-20.13)"  # Table 2's average


# ------------------------------------------------------------------------------------------ the published data

TOLERANCE_HM, TOLERANCE_MEAN = 0.01, 0.02


def _doubtful(table) -> set[tuple]:
    return {(k[0], k[2], k[3]) for k, c in table.cells.items() if c.doubt}


def test_published_base_to_new_hm_and_averages_check_except_the_cells_listed_as_not_checking():
    (table1,) = [t for t in load_published("clipfit-paper").tables if t.key == "table1"]
    methods = sorted({k[0] for k in table1.cells})
    failing = set()
    for m in methods:
        for d in table1.columns:
            b, n, h = (table1.cells[m, 16, d, k].value for k in ("base", "new", "hm"))
            if abs(2 * b * n / (b + n) - h) > TOLERANCE_HM:
                failing.add((m, d, "new"))  # each failing HM is its New misprinted, says the data file
        for metric in ("base", "new"):
            mean = statistics.fmean(table1.cells[m, 16, d, metric].value for d in table1.averages["average"])
            if abs(mean - table1.cells[m, 16, "average", metric].value) > TOLERANCE_MEAN:
                failing.add((m, "average", metric))
    assert len(methods) == 7 and len(table1.columns) == 12
    assert failing == _doubtful(table1)
    assert failing == {("cocoop", "stanford_cars", "new"), ("clip-adapter", "caltech101", "new"),
                       ("clip-adapter", "stanford_cars", "new"), ("kgcoop", "caltech101", "new"),
                       ("cocoop", "average", "new"), ("clip-adapter", "average", "new"), ("kgcoop", "average", "new")}


def test_published_accuracy_tables_average_their_columns():
    published = load_published("clipfit-paper")
    checked = 0
    for table in published.tables:
        for column, over in table.averages.items():
            rows = {(k[0], k[1]) for k in table.cells}
            for method, shots in rows:
                if table.kind == "base2new":
                    continue
                values = [table.cells.get((method, shots, c, "accuracy")) for c in over]
                average = table.cells.get((method, shots, column, "accuracy"))
                if average is None or None in values:
                    continue  # Table 10's 2-shot CoOp: three cells lost in the text
                assert abs(statistics.fmean(v.value for v in values) - average.value) <= TOLERANCE_MEAN, (
                    table.key, method, shots)
                checked += 1
    assert checked == 7 * 5 - 1 + 8 + 5  # Table 10, Table 3, Table 9
    table2, table10 = (next(t for t in published.tables if t.key == k) for k in ("table2", "table10"))
    for key, cell in table2.cells.items():
        if key in table10.cells:
            assert table10.cells[key].value == cell.value
    assert len(table2.cells) == 35 and len(table10.cells) == 5 * 7 * 12 - 4


def test_every_published_method_name_maps_to_a_registered_method():
    from clipfit.methods import METHODS

    assert set(load_published("clipfit-paper").methods.values()) <= set(METHODS.names())


def test_an_unknown_published_name_names_the_shipped_ones():
    with pytest.raises(ClipFitError, match="--compare nope: no such published table set; shipped: clipfit-paper"):
        load_published("nope")


# ------------------------------------------------------------------------------------------ the command line


def test_cli_table_runs_and_table_show_print_the_same_and_out_writes_a_file(b2n_runs, capsys):
    from clipfit.cli import main

    main(["table", str(b2n_runs)])
    shorthand = capsys.readouterr().out
    main(["table", "show", str(b2n_runs)])
    assert capsys.readouterr().out == shorthand == render_table([b2n_runs])
    main(["table", "--kind", "base2new", str(b2n_runs), "--kind", "efficiency"])  # options before the folders too
    assert capsys.readouterr().out == render_table([b2n_runs], kind=["base2new", "efficiency"])
    out = b2n_runs / "tables" / "b2n.csv"
    main(["table", "--format", "csv", "--out", str(out), str(b2n_runs)])
    assert out.read_text() == render_table([b2n_runs], fmt="csv")
    with pytest.raises(SystemExit):
        main(["table", str(b2n_runs / "nowhere")])
    assert "nowhere: no such folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ real runs


@pytest.fixture(scope="module")
def mini_runs(tmp_path_factory) -> Path:
    """Zero-shot and CLIPFit (1 epoch, 2 shots, seeds 1 2) on mini_digits with the built-in mini CLIP, in
    both protocols: about 12 s on one core."""
    from clipfit import api

    root = tmp_path_factory.mktemp("mini")
    for method, seeds in (("zeroshot", [1]), ("clipfit", [1, 2])):
        for protocol in ("few-shot", "base2new"):
            api.run(api.RunConfig(method=method, model="mini-clip", pretrained="builtin", dataset="mini_digits",
                                  data_root=str(root / "data"), protocol=protocol, shots=2, seeds=seeds,
                                  optim=api.OptimConfig(epochs=1), out=str(root / "runs" / f"{protocol}-{method}")),
                    progress=False, echo=False)
    return root / "runs"


@pytest.mark.slow
def test_real_runs_render_their_summaries_numbers(mini_runs):
    markdown = render_table([mini_runs])
    summary = json.loads((mini_runs / "base2new-clipfit" / "summary.json").read_text())
    base, new, hm = rows_after(markdown, "mini_digits", 3)
    assert base[1].startswith(f"{summary['mean']['base']:.2f} ± {summary['std']['base']:.2f} (2)")
    assert hm[1].startswith(f"{summary['mean']['hm']:.2f} ± {summary['std']['hm']:.2f} (2)")
    few = json.loads((mini_runs / "few-shot-clipfit" / "summary.json").read_text())
    assert row(markdown, "2", "clipfit")[0].startswith(f"{few['mean']['accuracy']:.2f} ± ")
    assert "†" not in markdown  # the same draws for every method
    rows = list(csv.DictReader(io.StringIO(render_table([mini_runs], kind="efficiency", fmt="csv"))))
    params = next(r for r in rows if (r["method"], r["protocol"], r["column"]) == ("clipfit", "base2new",
                                                                                   "trainable_parameters"))
    assert float(params["mean"]) == summary["per_seed"][0]["trainable_parameters"]
