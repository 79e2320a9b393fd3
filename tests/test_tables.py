"""The README's mini-world tables: their rows, their markdown, and their place in the README."""

import dataclasses

import pytest

from clipfit.readme import update_readme
from clipfit_world.tables import (
    README_END,
    README_NAME,
    README_START,
    MiniWorldTableConfig,
    leaderboard_markdown,
    mini_world_table,
    to_markdown,
)


def accuracy(value, seconds=4.0):
    return {"mean": {"accuracy": value}, "std": {"accuracy": 0.0}, "seconds": seconds}


def row(task, zero, fit, coop=None, new=None):
    methods = {"clipfit": {"mean": {"base": fit, "new": fit, "hm": fit}, "std": {"base": 1.0, "new": 2.0, "hm": 0.5},
                           "seconds": 10.0}}
    fewshot = {"clipfit": {1: accuracy(fit - 10), 16: accuracy(fit + 10)}}
    if coop is not None:
        methods["coop"] = {"mean": {"base": coop, "new": new, "hm": 2 * coop * new / (coop + new)},
                           "std": {"base": 0.0, "new": 0.0, "hm": 0.0}, "seconds": 30.0}
        fewshot["coop"] = {1: accuracy(coop - 20), 16: None}  # 16-shot not finished
    return {"task": task, "classes": 10, "zeroshot_all": zero, "zeroshot": {"base": zero, "new": zero, "hm": zero},
            "methods": methods, "fewshot": fewshot}


def test_markdown_has_a_row_per_task_and_a_mean_over_tasks_with_training_data():
    rows = [row("mini_a", 40.0, 50.0), row("mini_b", 60.0, 70.0),
            {"task": "mini_a_sketch", "classes": 10, "zeroshot_all": 12.5, "test_domain_of": "mini_a"}]
    lines = to_markdown(MiniWorldTableConfig(seeds=[1, 2]), rows).splitlines()
    assert "CLIPFit 16-shot, its own recipe" in lines[0] and "mean ± std over seeds 1 2" in lines[0]
    assert lines[2] == "| mini_a | 10 | 40.0 | 40.0 / 40.0 / 40.0 | 50.0±1.0 / 50.0±2.0 / 50.0±0.5 |"
    assert lines[4] == "| mini_a_sketch | 10 | 12.5 | test domain of mini_a | |"
    assert lines[5] == ("| **mean** (tasks with training data; HM of the mean Base and New) | | 50.0 | "
                        "50.0 / 50.0 / 50.0 | 60.0 / 60.0 / 60.0 |")


def test_one_seed_shows_no_spread_and_other_epochs_are_named():
    lines = to_markdown(MiniWorldTableConfig(seeds=[1], epochs=7), [row("mini_a", 40.0, 50.0)]).splitlines()
    assert "CLIPFit 16-shot, 7 epochs" in lines[0] and "(seed 1;" in lines[0] and "±" not in lines[0]
    assert lines[2] == "| mini_a | 10 | 40.0 | 40.0 / 40.0 / 40.0 | 50.0 / 50.0 / 50.0 |"


def test_leaderboard_ranks_methods_by_the_hm_of_their_mean_base_and_new():
    # coop: mean Base (80 + 60) / 2 = 70, mean New (20 + 40) / 2 = 30, HM(70, 30) = 42.0 (not the mean of
    # the per-task HMs, (32 + 48) / 2 = 40.0); CLIPFit 55 everywhere.
    # Few-shot cells are the mean accuracy over tasks; a cell with an unfinished task is "…"; a method
    # whose classifier cannot name new classes has "–" for base-to-new; s / run is over finished cells.
    rows = [row("mini_a", 40.0, 50.0, coop=80.0, new=20.0), row("mini_b", 60.0, 60.0, coop=60.0, new=40.0)]
    for r in rows:
        r["methods"]["linear-probe"] = None
        r["fewshot"]["linear-probe"] = {1: accuracy(30.0, 2.0), 16: accuracy(70.0, 2.0)}
    table = MiniWorldTableConfig(methods=["clipfit", "coop", "linear-probe"], fewshot_shots=(1, 16))
    lines = leaderboard_markdown(table, rows).splitlines()
    assert lines[0] == "| method | 1-shot | 16-shot | Base | New | HM | s / run |"
    assert lines[2] == "| zeroshot | 50.0 | 50.0 | 50.0 | 50.0 | 50.0 | |"
    assert lines[3] == "| clipfit | 45.0 | 65.0 | 55.0 | 55.0 | 55.0 | 6 |"  # seconds (10 + 4 + 4) / 3 per task
    assert lines[4] == "| coop | 50.0 | … | 70.0 | 30.0 | 42.0 | 17 |"  # (30 + 4) / 2
    assert lines[5] == "| linear-probe | 30.0 | 70.0 | – | – | – | 2 |"


def test_update_readme_replaces_only_the_text_between_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold table\n{README_END}\noutro\n")
    update_readme(readme, "| new |", README_NAME)
    assert readme.read_text() == f"intro\n{README_START}\n| new |\n{README_END}\noutro\n"


def test_update_readme_without_markers_fails_and_leaves_the_file_alone(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    with pytest.raises(ValueError, match="README.md: no <!-- mini-world-table:start -->"):
        update_readme(readme, "| new |", README_NAME)
    assert readme.read_text() == "no markers here\n"


@pytest.mark.slow  # runs every setting of a small table: about 17 s
def test_table_runs_each_setting_once_and_reuses_finished_runs(tmp_path):
    table = MiniWorldTableConfig(tasks=["mini_colors", "mini_shapes_sketch"], methods=["clipfit"], seeds=[1], shots=2,
                                 epochs=1, data_root=str(tmp_path / "data"), out=str(tmp_path / "runs"),
                                 fewshot_shots=(1,))
    unfinished = mini_world_table(dataclasses.replace(table, run_missing=False), progress=False)
    assert unfinished[0]["methods"]["clipfit"] is None and unfinished[0]["fewshot"]["clipfit"][1] is None
    rows = mini_world_table(table, progress=False)
    assert [r["task"] for r in rows] == ["mini_colors", "mini_shapes_sketch"]
    colors, sketch = rows
    assert sketch["test_domain_of"] == "mini_shapes" and 0 <= sketch["zeroshot_all"] <= 100
    assert set(colors["methods"]["clipfit"]["mean"]) == {"base", "new", "hm"}
    metrics = sorted((tmp_path / "runs").rglob("metrics.json"))
    assert len(metrics) == 5  # colours: zero-shot all / base2new, CLIPFit base2new and 1-shot; sketch: zero-shot
    assert 0 <= colors["fewshot"]["clipfit"][1]["mean"]["accuracy"] <= 100
    stamps = [m.stat().st_mtime_ns for m in metrics]
    assert mini_world_table(table, progress=False) == rows
    assert [m.stat().st_mtime_ns for m in metrics] == stamps
    assert mini_world_table(dataclasses.replace(table, run_missing=False), progress=False) == rows


def test_a_readme_without_the_markers_is_refused_before_any_run(tmp_path, capsys):
    from clipfit.cli import main

    readme = tmp_path / "README.md"
    readme.write_text("<!-- mini-world-table:start -->\n<!-- mini-world-table:end -->\n")
    with pytest.raises(SystemExit):
        main(["table", "mini-world", "--readme", str(readme), "--out", str(tmp_path / "runs"),
              "--data-root", str(tmp_path / "data")])
    assert "no <!-- mini-world-leaderboard:start -->" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_a_table_on_another_built_in_model_has_its_own_runs_and_markers(tmp_path, capsys):
    """mini-clip keeps its folder and markers; mini-clip-b's table runs on mini-clip-b with names of its own."""
    from clipfit.cli import main
    from clipfit_world.tables import _setting, readme_names, table_out

    assert readme_names("mini-clip") == ("mini-world-table", "mini-world-leaderboard")
    assert readme_names("mini-clip-b") == ("mini-world-table-mini-clip-b", "mini-world-leaderboard-mini-clip-b")
    assert table_out("mini-clip") == "runs/mini-world-table"
    assert table_out("mini-clip-b") == "runs/mini-world-table-mini-clip-b"
    config = _setting(MiniWorldTableConfig(model="mini-clip-b"), "mini_colors", "clipfit", "base2new", [1])
    assert config.model == "mini-clip-b" and config.pretrained == "builtin"
    readme = tmp_path / "README.md"
    readme.write_text("<!-- mini-world-table:start -->\n<!-- mini-world-table:end -->\n"
                      "<!-- mini-world-leaderboard:start -->\n<!-- mini-world-leaderboard:end -->\n")
    with pytest.raises(SystemExit):  # mini-clip's markers are not mini-clip-b's: refused before any run
        main(["table", "mini-world", "--model", "mini-clip-b", "--readme", str(readme),
              "--out", str(tmp_path / "runs"), "--data-root", str(tmp_path / "data")])
    assert "no <!-- mini-world-table-mini-clip-b:start -->" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("command", "tasks", "why"), [
    (["table", "mini-world"], ["mini_colors", "mini_digit"],
     "'mini_digit' is not a mini-world task with training images or a test domain ("),
    (["table", "builtin-models", "--models", "mini-clip"], ["mini_colors", "mini_shapes_sketch"],
     "'mini_shapes_sketch' is not a mini-world task with training images ("),
    (["table", "mini-world"], ["mini_shapes_sketch"],
     "mini_shapes_sketch has no training images; name a task that has ("),
    (["table", "mini-world", "--readme", "README.md"], ["mini_colors"], "README.md's table covers every task"),
    (["table", "builtin-models", "--readme", "README.md"], ["mini_colors"], "README.md's table covers every task"),
])
def test_a_table_on_chosen_tasks_refuses_what_it_cannot_run_before_any_run(tmp_path, capsys, monkeypatch, command,
                                                                            tasks, why):
    """--tasks splits a table over processes (disjoint tasks, one set of run folders); a wrong name, test domains
    alone, or a part of a table written into a README stop it in one line, before any run. The comparison trains on
    every task, so a test-only domain has no place in it."""
    from clipfit.cli import main

    monkeypatch.chdir(tmp_path)  # the default run folders are relative: any run would land here
    readme = tmp_path / "README.md"
    readme.write_text("<!-- builtin-models:start -->\n<!-- builtin-models:end -->\n"
                      "<!-- mini-world-table:start -->\n<!-- mini-world-table:end -->\n"
                      "<!-- mini-world-leaderboard:start -->\n<!-- mini-world-leaderboard:end -->\n")
    command = [str(readme) if c == "README.md" else c for c in command]
    with pytest.raises(SystemExit):
        main([*command, "--tasks", *tasks, "--data-root", str(tmp_path / "data"), "--no-progress"])
    err = capsys.readouterr().err
    assert f"--tasks{' with --readme' if 'covers' in why else ''}: {why.replace('README.md', str(readme))}" in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]


def test_chosen_tasks_keep_the_worlds_order_once_each():
    from clipfit_world.commands import _chosen_tasks
    from clipfit_world.tasks import WORLD_TASKS

    assert _chosen_tasks(None, True, None) == list(WORLD_TASKS)
    assert _chosen_tasks(None, False, None) == [t for t, task in WORLD_TASKS.items() if task.parent is None]
    assert _chosen_tasks(["mini_textures", "mini_digits", "mini_textures"], False, None) == ["mini_digits",
                                                                                             "mini_textures"]
