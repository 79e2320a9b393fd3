"""The README's mini-world table: its rows, its markdown, and its place in the README."""

import pytest

from clipfit.tables import README_END, README_START, MiniWorldTableConfig, mini_world_table, to_markdown, update_readme


def row(task, zero, fit):
    return {"task": task, "classes": 10, "zeroshot_all": zero,
            "zeroshot": {"base": zero, "new": zero, "hm": zero},
            "clipfit": {"base": fit, "new": fit, "hm": fit}, "clipfit_std": {"base": 1.0, "new": 2.0, "hm": 0.5}}


def test_markdown_has_a_row_per_task_and_a_mean_over_tasks_with_training_data():
    rows = [row("mini_a", 40.0, 50.0), row("mini_b", 60.0, 70.0),
            {"task": "mini_a_sketch", "classes": 10, "zeroshot_all": 12.5, "test_domain_of": "mini_a"}]
    lines = to_markdown(MiniWorldTableConfig(seeds=[1, 2]), rows).splitlines()
    assert "CLIPFit 16-shot, 100 epochs" in lines[0] and "mean ± std over seeds 1 2" in lines[0]
    assert lines[2] == "| mini_a | 10 | 40.0 | 40.0 / 40.0 / 40.0 | 50.0±1.0 / 50.0±2.0 / 50.0±0.5 |"
    assert lines[4] == "| mini_a_sketch | 10 | 12.5 | test domain of mini_a | |"
    assert lines[5] == "| **mean** (tasks with training data; HM of the mean Base and New) | | 50.0 | 50.0 / 50.0 / 50.0 | 60.0 / 60.0 / 60.0 |"


def test_one_seed_shows_no_spread_and_other_epochs_are_named():
    lines = to_markdown(MiniWorldTableConfig(seeds=[1], epochs=7), [row("mini_a", 40.0, 50.0)]).splitlines()
    assert "CLIPFit 16-shot, 7 epochs" in lines[0] and "(seed 1;" in lines[0] and "±" not in lines[0]
    assert lines[2] == "| mini_a | 10 | 40.0 | 40.0 / 40.0 / 40.0 | 50.0 / 50.0 / 50.0 |"


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
    table = MiniWorldTableConfig(tasks=["mini_colors", "mini_shapes_sketch"], seeds=[1], shots=2, epochs=1,
                                 data_root=str(tmp_path / "data"), out=str(tmp_path / "runs"))
    rows = mini_world_table(table, progress=False)
    assert [r["task"] for r in rows] == ["mini_colors", "mini_shapes_sketch"]
    colors, sketch = rows
    assert sketch["test_domain_of"] == "mini_shapes" and 0 <= sketch["zeroshot_all"] <= 100
    assert set(colors["clipfit"]) == {"base", "new", "hm"}
    metrics = sorted((tmp_path / "runs").rglob("metrics.json"))
    assert len(metrics) == 4  # colours: zero-shot all / base2new, CLIPFit base2new; sketch: zero-shot
    stamps = [m.stat().st_mtime_ns for m in metrics]
    assert mini_world_table(table, progress=False) == rows
    assert [m.stat().st_mtime_ns for m in metrics] == stamps
