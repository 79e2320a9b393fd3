"""Zero-shot accuracy of a CLIP on the mini-world tasks (a measuring stick for the built-in weights).

    python -m clipfit.world.evaluate --root data/mini_world [--weights FILE] [--tasks mini_digits ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from clipfit.world.tasks import WORLD_TASKS, WorldTask, generate_task


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, task: WorldTask | str, root: Path | str, split: str = "test",
                       batch_size: int = 256) -> float:
    """Top-1 accuracy of `model` on `split` of `task`, prompting each class with the task's template."""
    from clipfit.world.pretrain import images_to_tensor

    task = WORLD_TASKS[task] if isinstance(task, str) else task
    folder = generate_task(task.name, root)
    items = json.loads((folder / task.split_file).read_text())[split]
    model.eval()
    text = F.normalize(model.encode_text(tokenizer([task.template.format(c) for c in task.classnames])), dim=-1)
    correct = 0
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        images = [Image.open(folder / "images" / rel).convert("RGB") for rel, _, _ in chunk]
        feats = F.normalize(model.encode_image(images_to_tensor(images)), dim=-1)
        pred = (feats @ text.T).argmax(dim=-1)
        correct += int((pred == torch.tensor([label for _, label, _ in chunk])).sum())
    return correct / len(items)


def main(argv=None):
    import open_clip

    from clipfit.world.model import MODEL_NAME, create_mini_clip, register_config

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path("data/mini_world"))
    p.add_argument("--weights", type=Path, default=None, help="safetensors file (default: built-in)")
    p.add_argument("--tasks", nargs="*", default=list(WORLD_TASKS))
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.weights:
        register_config()
        model = open_clip.create_model(MODEL_NAME, pretrained=str(a.weights))
    else:
        model = create_mini_clip(pretrained=True)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    results = {}
    for name in a.tasks:
        t = WORLD_TASKS[name]
        results[name] = acc = zero_shot_accuracy(model, tokenizer, t, a.root)
        print(f"{name:22s} {len(t.classnames):3d} classes  chance {100 / len(t.classnames):5.1f}%  "
              f"zero-shot {100 * acc:5.1f}%  ({t.template})")
    print(json.dumps({k: round(v, 4) for k, v in results.items()}))
    return results


if __name__ == "__main__":
    main()
