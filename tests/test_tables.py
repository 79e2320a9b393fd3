"""The README's mini-world tables: their rows, their markdown, and their place in the README."""

import pytest

from clipfit.tables import (README_END, README_START, MiniWorldTableConfig, leaderboard_markdown, mini_world_table,
                            to_markdown, update_readme)


def row(task, zero, fit, coop=None, new=None):
    methods = {"clipfit": {"mean": {"base": fit, "new": fit, "hm": fit}, "std": {"base": 1.0, "new": 2.0, "hm": 0.5}, "seconds": 10.0}}
    if coop is not None:
        methods["coop"] = {"mean": {"base": coop, "new": new, "hm": 2 * coop * new / (coop + new)},
                           "std": {"base": 0.0, "new": 0.0, "hm": 0.0}, "seconds": 30.0}
    return {"task": task, "classes": 10, "zeroshot_all": zero, "zeroshot": {"base": zero, "new": zero, "hm": zero},
            "methods": methods}


def test_markdown_has_a_row_per_task_and_a_mean_over_tasks_with_training_data():
    rows = [row("mini_a", 40.0, 50.0), row("mini_b", 60.0, 70.0),
            {"task": "mini_a_sketch", "classes": 10, "zeroshot_all": 12.5, "test_domain_of": "mini_a"}]
    lines = to_markdown(MiniWorldTableConfig(seeds=[1, 2]), rows).splitlines()
    assert "CLIPFit 16-shot, its own recipe" in lines[0] and "mean ± std over seeds 1 2" in lines[0]
    assert lines[2] == "| mini_a | 10 | 40.0 | 40.0 / 40.0 / 40.0 | 50.0±1.0 / 50.0±2.0 / 50.0±0.5 |"
    assert lines[4] == "| mini_a_sketch | 10 | 12.5 | test domain of mini_a | |"
    assert lines[5] == "| **mean** (tasks with training data; HM of the mean Base and New) | | 50.0 | 50.0 / 50.0 / 50.0 | 60.0 / 60.0 / 60.0 |"


def test_one_seed_shows_no_spread_and_other_epochs_are_named():
    lines = to_markdown(MiniWorldTableConfig(seeds=[1], epochs=7), [row("mini_a", 40.0, 50.0)]).splitlines()
    assert "CLIPFit 16-shot, 7 epochs" in lines[0] and "(seed 1;" in lines[0] and "±" not in lines[0]
    assert lines[2] == "| mini_a | 10 | 40.0 | 40.0 / 40.0 / 40.0 | 50.0 / 50.0 / 50.0 |"


def test_leaderboard_ranks_methods_by_the_hm_of_their_mean_base_and_new():
    # coop: mean Base (80 + 60) / 2 = 70, mean New (20 + 40) / 2 = 30, HM(70, 30) = 42.0 (not the mean of
    # the per-task HMs, (32 + 48) / 2 = 40.0); CLIPFit 55 everywhere.
    rows = [row("mini_a", 40.0, 50.0, coop=80.0, new=20.0), row("mini_b", 60.0, 60.0, coop=60.0, new=40.0)]
    lines = leaderboard_markdown(MiniWorldTableConfig(methods=["clipfit", "coop"]), rows).splitlines()
    assert lines[0] == "| method | Base | New | HM | a HM | b HM | s / run |"
    assert lines[2] == "| zeroshot | 50.0 | 50.0 | 50.0 | 40.0 | 60.0 | |"
    assert lines[3] == "| clipfit | 55.0 | 55.0 | 55.0 | 50.0 | 60.0 | 10 |"
    assert lines[4] == "| coop | 70.0 | 30.0 | 42.0 | 32.0 | 48.0 | 30 |"


def test_update_readme_replaces_only_the_text_between_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold table\n{README_END}\noutro\n")
    update_readme(readme, "| new |")
    assert readme.read_text() == f"intro\n{README_START}\n| new |\n{README_END}\noutro\n"


def test_update_readme_without_markers_fails_and_leaves_the_file_alone(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    with pytest.raises(ValueError, match="README.md: no <!-- mini-world-table:start -->"):
        update_readme(readme, "| new |")
    assert readme.read_text() == "no markers here\n"


def test_table_runs_each_setting_once_and_reuses_finished_runs(tmp_path):
    table = MiniWorldTableConfig(tasks=["mini_colors", "mini_shapes_sketch"], methods=["clipfit"], seeds=[1], shots=2, epochs=1,
                                 data_root=str(tmp_path / "data"), out=str(tmp_path / "runs"))
    rows = mini_world_table(table, progress=False)
    assert [r["task"] for r in rows] == ["mini_colors", "mini_shapes_sketch"]
    colors, sketch = rows
    assert sketch["test_domain_of"] == "mini_shapes" and 0 <= sketch["zeroshot_all"] <= 100
    assert set(colors["methods"]["clipfit"]["mean"]) == {"base", "new", "hm"}
    metrics = sorted((tmp_path / "runs").rglob("metrics.json"))
    assert len(metrics) == 4  # colours: zero-shot all / base2new, CLIPFit base2new; sketch: zero-shot
    stamps = [m.stat().st_mtime_ns for m in metrics]
    assert mini_world_table(table, progress=False) == rows
    assert [m.stat().st_mtime_ns for m in metrics] == stamps
