"""The mini CLIP: an open_clip ViT config sized for the mini world, and its built-in weights.

It is a plain open_clip `CLIP` (VisionTransformer with ln_pre/ln_post, text transformer with
c_fc/c_proj MLPs, CLIP tokenizer, context 77), so everything that works on ViT-B/16 works on it.
Preprocessing is open_clip's default for the config: 64x64, OpenAI mean/std.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch

from clipfit.backbone import BUILTIN, load_backbone

MODEL_NAME = "mini-clip"
# The architecture's open_clip JSON config and its pretrained weights ship in this package; the plugin
# (`clipfit_world.plugin`) registers both, so that `--model mini-clip --pretrained builtin` loads them.
MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
WEIGHTS = Path(__file__).parent / "weights" / f"{MODEL_NAME}.safetensors"
MEAN = open_clip.OPENAI_DATASET_MEAN
STD = open_clip.OPENAI_DATASET_STD
IMAGE_SIZE = 64


def create_mini_clip(pretrained: bool = True) -> torch.nn.Module:
    """The mini CLIP, with the built-in weights when `pretrained` (fp16 on disk, fp32 in memory); random
    init from torch's global generator otherwise (pretraining seeds it)."""
    if pretrained:
        return load_backbone(MODEL_NAME, BUILTIN).model
    from clipfit.backbone import architectures

    architectures()  # open_clip learns the mini CLIP's config from the plugin
    return open_clip.create_model(MODEL_NAME, pretrained=None)
