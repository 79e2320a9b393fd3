"""The built-in mini CLIPs: open_clip ViT configs sized for the mini world, and their weights.

Each is a plain open_clip `CLIP` (VisionTransformer with ln_pre/ln_post, text transformer with c_fc/c_proj
MLPs, CLIP tokenizer, context 77), so everything that works on ViT-B/16 works on them. Preprocessing is
open_clip's default for the config: 64x64, OpenAI mean/std.

- ``mini-clip``: width 128, 4 image and 3 text blocks; pretrained on the v1 captions. Its file never changes,
  so runs made on it resume and compare.
- ``mini-clip-b``: closer to CLIP's shape (both towers 6 blocks or more, a wider residual stream), pretrained
  on the v2 captions (`scenes.CAPTIONS`) for longer. The shape was chosen by measurement: README, "The
  built-in mini CLIPs".
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch

from clipfit.backbone import BUILTIN, load_backbone
from clipfit.errors import ClipFitError
from clipfit_world.defaults import BUILTIN_MODELS as MODELS

MODEL_NAME = MODELS[0]
# The architectures' open_clip JSON configs and their pretrained weights ship in this package; the plugin
# (`clipfit_world.plugin`) registers both, so that `--model mini-clip --pretrained builtin` loads them.
MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS = WEIGHTS_DIR / f"{MODEL_NAME}.safetensors"
MEAN = open_clip.OPENAI_DATASET_MEAN
STD = open_clip.OPENAI_DATASET_STD
IMAGE_SIZE = 64


def weights_file(name: str = MODEL_NAME) -> Path:
    """Where the built-in model ``name``'s fp16 safetensors file lies in the package."""
    if name not in MODELS:
        raise ValueError(f"{name!r} is not a built-in mini CLIP ({', '.join(MODELS)})")
    return WEIGHTS_DIR / f"{name}.safetensors"


def require_weights(name: str) -> Path:
    """The built-in model ``name``'s weights file; `ClipFitError` in one line when it is not there (an install
    without package data, or a model still being pretrained), for commands that would fail at their first run."""
    path = weights_file(name)
    if not path.is_file():
        raise ClipFitError(f"{name}: its built-in weights are not there yet ({path}); pretrain it first "
                           f"(python -m clipfit_world.pretrain --model {name} --out {path}; README, 'The built-in "
                           "mini CLIPs'), or use another model")
    return path


def create_mini_clip(pretrained: bool = True, name: str = MODEL_NAME) -> torch.nn.Module:
    """The built-in model ``name``, with its shipped weights when `pretrained` (fp16 on disk, fp32 in memory);
    random init from torch's global generator otherwise (pretraining seeds it)."""
    weights_file(name)
    if pretrained:
        return load_backbone(name, BUILTIN).model
    from clipfit.backbone import architectures

    architectures()  # open_clip learns the mini CLIPs' configs from the plugin
    return open_clip.create_model(name, pretrained=None)
