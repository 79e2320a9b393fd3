"""The mini world's commands: `clipfit demo`, `clipfit table mini-world` and `clipfit table builtin-models`.

Declared in pyproject.toml as the entry point ``world = "clipfit_world.commands:register"`` of the group
``clipfit.commands``: the CLI loads it to build its parser, so this module imports nothing heavy (no
torch, no open_clip); each command imports what it runs when it runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from clipfit import defaults
from clipfit.plugins import Command, register_command
from clipfit_world.defaults import BUILTIN_MODELS, DEMO_EPOCHS, DEMO_MODEL, DEMO_OUT, DEMO_TASK, TABLE_OUT

DATA_ROOT_DEFAULT = f"default: $CLIPFIT_DATA, else {defaults.CACHE_ROOT}/data"


def register() -> None:
    """Register the mini world's commands (called once per process, when the CLI builds its parser)."""
    register_command(Command("demo", "zero-shot vs CLIPFit, base-to-new on a mini-world task with a built-in "
                             "mini CLIP (offline, under a minute)", _demo_arguments, _run_demo))
    register_command(Command("mini-world", "mini CLIP zero-shot per mini-world task; every method's few-shot "
                             "(1-16 shots) and 16-shot base-to-new", _table_arguments, _run_table, parent="table"))
    register_command(Command("builtin-models", "the built-in models side by side: zero-shot, linear-probe ceiling, "
                             "CLIPFit and its halves base-to-new, class-feature drift", _compare_arguments,
                             _run_compare, parent="table"))


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default=DEMO_TASK, help="a mini-world task with training images: mini_digits, "
                                                     "mini_letters, mini_shapes, mini_colors, mini_textures")
    p.add_argument("--model", choices=BUILTIN_MODELS, default=DEMO_MODEL,
                   help="the built-in model both runs start from")
    p.add_argument("--data-root", help=f"where the task is generated ({DATA_ROOT_DEFAULT})")
    p.add_argument("--out", default=DEMO_OUT, help="runs go to <out>/<model>/<task>/<method>")
    p.add_argument("--epochs", type=int, default=DEMO_EPOCHS, help="CLIPFit's training epochs")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _run_demo(args) -> None:
    from clipfit_world.demo import DemoConfig, print_demo, run_demo
    from clipfit_world.model import require_weights

    require_weights(args.model)  # before the task is generated
    demo = DemoConfig(task=args.task, model=args.model, data_root=args.data_root or str(defaults.default_data_root()),
                      out=args.out, epochs=args.epochs)
    print_demo(demo, run_demo(demo, progress=not args.no_progress))


def _table_arguments(t: argparse.ArgumentParser) -> None:
    t.add_argument("--model", choices=BUILTIN_MODELS, default=BUILTIN_MODELS[0],
                   help="the built-in model every run starts from")
    t.add_argument("--methods", nargs="+", default=["all"],
                   help="methods to compare with zero-shot "
                        "(CLIPFit always; 'all': every registered method that trains)")
    t.add_argument("--seeds", type=int, nargs="+", default=list(defaults.SEEDS),
                   help=f"each method's seeds (default: {' '.join(map(str, defaults.SEEDS))})")
    t.add_argument("--epochs", type=int, help="training epochs for every method (default: each method's own recipe)")
    _tasks_argument(t)
    t.add_argument("--data-root", help=f"where the tasks are generated ({DATA_ROOT_DEFAULT})")
    t.add_argument("--out", help=f"run folders; finished runs are reused (default {TABLE_OUT}, or "
                                 f"{TABLE_OUT}-<model> for another model)")
    t.add_argument("--readme", type=Path, help="write the table into this README between its markers (for another "
                                               "model than mini-clip, markers named with -<model>)")
    t.add_argument("--finished-only", action="store_true",
                   help="run nothing: write the tables from the runs finished so far (cells still to run show …)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")


def _tasks_argument(t: argparse.ArgumentParser) -> None:
    t.add_argument("--tasks", nargs="+", help="only these mini-world tasks (default: all); the means are over "
                                              "them. Two processes on disjoint tasks share one table's run folders")


def _chosen_tasks(tasks: list[str] | None, test_only: bool, readme: Path | None) -> list[str]:
    """The tasks a table runs on, in the world's order: all (test-only domains too where ``test_only``), or the
    ones named, checked. `ClipFitError` for an unknown name, for test domains alone (a table's means need a task
    with training images), and for a subset written into a README (whose table says it covers every task)."""
    from clipfit.errors import ClipFitError
    from clipfit_world.tasks import WORLD_TASKS

    known = [t for t, task in WORLD_TASKS.items() if test_only or task.parent is None]
    for task in tasks or []:
        if task not in known:
            raise ClipFitError(f"--tasks: {task!r} is not a mini-world task with training images"
                               f"{' or a test domain' if test_only else ''} ({', '.join(known)})")
    chosen = [t for t in known if t in (tasks or known)]
    if all(WORLD_TASKS[t].parent is not None for t in chosen):
        raise ClipFitError(f"--tasks: {', '.join(chosen)} has no training images; name a task that has "
                           f"({', '.join(t for t in known if WORLD_TASKS[t].parent is None)})")
    if readme is not None and chosen != known:
        raise ClipFitError(f"--tasks with --readme: {readme}'s table covers every task; run the parts without "
                           "--readme, then write the whole table with --finished-only --readme")
    return chosen


def _run_table(args) -> None:
    from clipfit.methods import get_method
    from clipfit.readme import check_markers, update_readme
    from clipfit_world.tables import (
        MiniWorldTableConfig,
        leaderboard_markdown,
        mini_world_table,
        readme_names,
        table_out,
        to_markdown,
        trained_methods,
    )

    methods = trained_methods() if args.methods == ["all"] else args.methods
    for name in methods:
        get_method(name)  # an unknown name fails before any run
    if "clipfit" not in methods:
        methods = [*methods, "clipfit"]  # the per-task table shows it
    names = readme_names(args.model)
    if args.readme:
        check_markers(args.readme, list(names))  # before hours of runs, not after
    from clipfit_world.model import require_weights

    require_weights(args.model)  # before any task is generated
    table = MiniWorldTableConfig(model=args.model, methods=methods, seeds=args.seeds, epochs=args.epochs,
                                 tasks=_chosen_tasks(args.tasks, True, args.readme),
                                 data_root=args.data_root or str(defaults.default_data_root()),
                                 out=args.out or table_out(args.model), run_missing=not args.finished_only)
    rows = mini_world_table(table, progress=not args.no_progress)
    markdown, leaderboard = to_markdown(table, rows), leaderboard_markdown(table, rows)
    print(markdown, leaderboard, sep="\n\n")
    if args.readme:
        update_readme(args.readme, markdown, names[0])
        update_readme(args.readme, leaderboard, names[1])
        print(f"updated {args.readme}")


def _compare_arguments(t: argparse.ArgumentParser) -> None:
    t.add_argument("--models", nargs="+", choices=BUILTIN_MODELS, default=list(BUILTIN_MODELS),
                   help="the built-in models to compare, a column each (default: all)")
    t.add_argument("--seeds", type=int, nargs="+", default=list(defaults.SEEDS),
                   help=f"each method's seeds (default: {' '.join(map(str, defaults.SEEDS))})")
    _tasks_argument(t)
    t.add_argument("--data-root", help=f"where the tasks are generated ({DATA_ROOT_DEFAULT})")
    t.add_argument("--readme", type=Path, help="write the table into this README between its builtin-models markers")
    t.add_argument("--finished-only", action="store_true",
                   help="run nothing: write the table from the runs finished so far (cells still to run show …)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")


def _run_compare(args) -> None:
    from clipfit.readme import check_markers, update_readme
    from clipfit_world.compare import README_NAME, CompareConfig, compare_models, to_markdown

    if args.readme:
        check_markers(args.readme, [README_NAME])  # before hours of runs, not after
    compare = CompareConfig(models=args.models, seeds=args.seeds, tasks=_chosen_tasks(args.tasks, False, args.readme),
                            data_root=args.data_root or str(defaults.default_data_root()),
                            run_missing=not args.finished_only)
    markdown = to_markdown(compare, compare_models(compare, progress=not args.no_progress))
    print(markdown)
    if args.readme:
        update_readme(args.readme, markdown, README_NAME)
        print(f"updated {args.readme}")
