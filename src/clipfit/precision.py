"""Precision applied: the autocast of a `Precision` (`clipfit.config.PRECISIONS`) and its weight layout.

Below the methods, so that a method rebuilt from its adapter file (`Method.from_pretrained`) gets the
weight layout it was trained and measured in, and above the config, which names precisions without torch.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import get_precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The torch dtype ``precision`` autocasts to; None for no autocast."""
    name = get_precision(precision).autocast_dtype
    return None if name is None else getattr(torch, name)


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` for the forward passes (a disabled one for fp32 and
    fp16-reference, whose fp16 weights run in fp16 without it)."""
    dtype = autocast_dtype(precision)
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def apply_precision(model: nn.Module, precision: str) -> None:
    """Put a method's CLIP (``model``: the method, whose ``clip`` it converts, or the CLIP itself) into
    the weight layout ``precision`` asks for, before training or evaluation.

    ``fp16-reference`` converts the CLIP in place, as OpenAI's `build_model` (`convert_weights`) leaves it
    and CoOp-family trainers keep it when `TRAINER.COOP.PREC` is fp16: every Conv and Linear weight and
    bias, the attention input projections and the text and image projections in fp16; LayerNorms,
    embeddings and the logit scale in fp32 (open_clip's `convert_weights_to_lp` is that function). For
    CLIPFit this makes the text MLP biases fp16 tensors that SGD updates in fp16 (an update below half an
    fp16 ulp of the weight is lost, as in the reference) while the image LayerNorms train in fp32. The
    conversion rounds the backbone's weights and is not undone: load a fresh backbone for another
    precision. It runs on a CPU too (fp16 matmuls work there, slowly). Other precisions change nothing.
    """
    if not get_precision(precision).weights_fp16:
        return
    from open_clip.model import convert_weights_to_lp

    convert_weights_to_lp(getattr(model, "clip", model), dtype=torch.float16)
