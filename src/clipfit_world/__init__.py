"""The mini vision-language world: a procedural image-caption generator, downstream tasks carved out
of it (CoOp layout, with deliberate style shifts), and two mini CLIPs pretrained on it.

    from clipfit_world import WORLD_TASKS, generate_task, create_mini_clip
    folder = generate_task("mini_shapes", "data/mini_world")
    model = create_mini_clip()                   # open_clip CLIP with the built-in weights
"""

import importlib

# Where each public name lives. Imported on first use (PEP 562), so that loading the package for its
# commands (`clipfit_world.commands`, read by the CLI's parser) loads neither torch nor the renderer.
_EXPORTS = {
    "IMAGE_SIZE": "model", "MEAN": "model", "MODEL_NAME": "model", "MODELS": "model", "STD": "model",
    "WEIGHTS": "model", "weights_file": "model",
    "create_mini_clip": "model", "Shift": "render", "iterate_pretraining_pairs": "scenes",
    "pretraining_pair": "scenes", "WORLD_TASKS": "tasks", "WorldTask": "tasks", "generate_task": "tasks",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'clipfit_world' has no attribute {name!r}")
    return getattr(importlib.import_module(f"clipfit_world.{_EXPORTS[name]}"), name)
