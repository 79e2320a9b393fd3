"""The mini world as a clipfit plugin: its tasks as datasets and the mini CLIPs' `builtin` weights.

Declared in pyproject.toml as the entry point ``world = "clipfit_world.plugin:register"`` of the group
``clipfit.plugins``, so that `clipfit` finds the mini world without importing it; its commands are in
`clipfit_world.commands` (the group ``clipfit.commands``), which the CLI loads without torch.
"""

from __future__ import annotations

import functools

from clipfit.backbone import register_builtin_weights
from clipfit.data import coop_dataset
from clipfit_world.model import MODEL_CONFIG_DIR, MODELS, weights_file
from clipfit_world.tasks import WORLD_TASKS, generate_task


def register() -> None:
    """Register the mini CLIPs' weights and the mini world's tasks (called once per process)."""
    for i, name in enumerate(MODELS):  # open_clip reads the configs folder once
        register_builtin_weights(name, weights_file(name), MODEL_CONFIG_DIR if i == 0 else None)
    for task in WORLD_TASKS.values():  # generated into the data root on first use
        coop_dataset(
            task.name, task.name, task.folder, "images", task.split_file, task.template,
            prepare=functools.partial(generate_task, task.name), test_only=task.parent is not None,
            mirror_invariant=task.mirror_invariant, min_crop_area=task.min_crop_area,
            family="mini-world", shift_of=task.parent,
        )
