"""The mini vision-language world: a procedural image-caption generator, downstream tasks carved out
of it (CoOp layout, with deliberate style shifts), and a mini CLIP pretrained on it.

    from clipfit_world import WORLD_TASKS, generate_task, create_mini_clip
    folder = generate_task("mini_shapes", "data/mini_world")
    model = create_mini_clip()                   # open_clip CLIP with the built-in weights
"""

from clipfit_world.model import IMAGE_SIZE, MEAN, MODEL_NAME, STD, WEIGHTS, create_mini_clip
from clipfit_world.render import Shift
from clipfit_world.scenes import iterate_pretraining_pairs, pretraining_pair
from clipfit_world.tasks import WORLD_TASKS, WorldTask, generate_task

__all__ = [
    "IMAGE_SIZE", "MEAN", "MODEL_NAME", "STD", "WEIGHTS", "WORLD_TASKS", "Shift", "WorldTask",
    "create_mini_clip", "generate_task", "iterate_pretraining_pairs", "pretraining_pair",
]
