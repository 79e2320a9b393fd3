"""The mini CLIP: an open_clip ViT config sized for the mini world, and its built-in weights.

It is a plain open_clip `CLIP` (VisionTransformer with ln_pre/ln_post, text transformer with
c_fc/c_proj MLPs, CLIP tokenizer, context 77), so everything that works on ViT-B/16 works on it.
Preprocessing is open_clip's default for the config: 64x64, OpenAI mean/std.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch

import clipfit
from clipfit.errors import BackboneError

MODEL_NAME = "mini-clip"
CONFIG_DIR = Path(clipfit.__file__).parent / "model_configs"
WEIGHTS = Path(clipfit.__file__).parent / "weights" / "mini-clip.safetensors"
MEAN = open_clip.OPENAI_DATASET_MEAN
STD = open_clip.OPENAI_DATASET_STD
IMAGE_SIZE = 64


PRETRAINED_TAG = "builtin"


def register_config() -> None:
    """Make `open_clip.create_model("mini-clip", pretrained="builtin")` work (idempotent).

    Adds the config folder to open_clip's model registry, and the built-in weights file as the
    pretrained tag "builtin" (open_clip's tag entries may name a local `file`).
    """
    if MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)
    from open_clip import pretrained as registry

    registry._PRETRAINED.setdefault(MODEL_NAME, {})[PRETRAINED_TAG] = {
        "url": "", "hf_hub": "", "file": str(WEIGHTS), "mean": MEAN, "std": STD,
        "interpolation": "bicubic", "resize_mode": "shortest",
    }


def create_mini_clip(pretrained: bool = True) -> torch.nn.Module:
    """The mini CLIP, with the built-in weights when `pretrained` (fp16 on disk, fp32 in memory)."""
    register_config()
    if pretrained and not WEIGHTS.is_file():
        raise BackboneError(f"built-in mini-clip weights not found at {WEIGHTS}; "
                            "run python -m clipfit.world.pretrain")
    return open_clip.create_model(MODEL_NAME, pretrained=PRETRAINED_TAG if pretrained else None)


def encode_text_trimmed(model, tokens: torch.Tensor) -> torch.Tensor:
    """`model.encode_text` on tokens cut after the batch's last end-of-text token.

    Exactly equal to encode_text on the full context (the causal mask hides the padding from the
    pooled end-of-text position), but cheaper; used by pretraining.
    """
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    x = model.token_embedding(tokens) + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
    return x @ model.text_projection
