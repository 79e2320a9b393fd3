"""The demo: zero-shot CLIP, then CLIPFit, base-to-new on one mini-world task with a built-in mini CLIP
(`mini-clip-b` by default).

Runs offline on a laptop CPU in a few minutes: the task is generated on first use under the data root.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from clipfit import defaults
from clipfit.config import OptimConfig, RunConfig
from clipfit.errors import ClipFitError
from clipfit.runner import run
from clipfit_world.defaults import DEMO_EPOCHS, DEMO_MODEL, DEMO_OUT, DEMO_TASK
from clipfit_world.tasks import WORLD_TASKS


@dataclass
class DemoConfig:
    task: str = DEMO_TASK
    model: str = DEMO_MODEL
    data_root: str = field(default_factory=lambda: str(defaults.default_data_root()))
    out: str = DEMO_OUT
    shots: int = 16
    seed: int = 1
    epochs: int = DEMO_EPOCHS
    batch_size: int = 32


def demo_folder(demo: DemoConfig, method: str) -> Path:
    """Each model's and task's demo has a folder of its own: `<out>/<model>/<task>/<method>`."""
    return Path(demo.out) / demo.model / demo.task / method


def run_demo(demo: DemoConfig, progress: bool = True) -> list[dict]:
    """Zero-shot and CLIPFit on the same task and seed; returns one row per method. `ClipFitError` for a
    task that is not a mini-world task with training images."""
    trainable = [name for name, task in WORLD_TASKS.items() if task.parent is None]
    if demo.task not in trainable:
        if demo.task in WORLD_TASKS:
            what = f"a test-only domain of {WORLD_TASKS[demo.task].parent} (no training images)"
        else:
            what = "not a mini-world task"
        raise ClipFitError(f"demo task {demo.task!r} is {what}; choose one of {', '.join(trainable)}")
    rows = []
    for method in ("zeroshot", "clipfit"):
        config = RunConfig(
            method=method, model=demo.model, pretrained="builtin", dataset=demo.task, data_root=demo.data_root,
            protocol="base2new", shots=demo.shots, seeds=[demo.seed],
            optim=OptimConfig(epochs=demo.epochs, batch_size=demo.batch_size), out=str(demo_folder(demo, method)),
        )
        started = time.time()
        summary = run(config, progress=progress, echo=False, overwrite=True)
        result = summary["per_seed"][0]
        rows.append({"method": method, "parameters": result["trainable_parameters"], "seconds": time.time() - started,
                     **{k: result[k] for k in ("base", "new", "hm")}})
    return rows


def print_demo(demo: DemoConfig, rows: list[dict]) -> None:
    # The heading is its own line: a rich table title wraps at the table's width, mid-phrase.
    heading = f"base-to-new on {demo.task} | {demo.model} (builtin) | {demo.shots} shots | seed {demo.seed}"
    table = Table()
    for column in ("method", "trainable params", "Base", "New", "HM", "time"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in rows:
        table.add_row(row["method"], f"{row['parameters']:,}", f"{row['base']:.2f}", f"{row['new']:.2f}",
                      f"{row['hm']:.2f}", f"{row['seconds']:.0f} s")
    console = Console()
    console.print(heading, style="bold")
    console.print(table)
    console.print(f"runs: {demo_folder(demo, 'zeroshot')} and {demo_folder(demo, 'clipfit')}; "
                  f"data: {Path(demo.data_root) / WORLD_TASKS[demo.task].folder}", soft_wrap=True)  # paths unbroken
