"""Random-init CLIP weights in the OpenAI layout that any code base can rebuild bit for bit.

The stored reference outputs in `tests/data/` were produced by running official implementations on
these weights: every tensor is drawn from its own `torch.Generator`, seeded from the run's seed and the
tensor's name, so neither side depends on the other's initialisation code or on the order in which
modules are built.
"""

from __future__ import annotations

import math
import zlib

import torch


def random_openai_state_dict(shapes: dict[str, torch.Size], seed: int = 0) -> dict[str, torch.Tensor]:
    """fp32 tensors for the given ``{name: shape}`` of an OpenAI-layout CLIP (names as in OpenAI's
    `clip.model.CLIP.state_dict()`, which open_clip's CLIP shares).

    - ``logit_scale``: log(100), CLIP's trained value;
    - 1-d ``*.weight`` (LayerNorm gains): 1 + 0.02 N(0, 1);
    - other 1-d tensors (biases, class embedding): 0.02 N(0, 1), so that every trainable tensor matters;
    - every other tensor: N(0, 1) / sqrt(fan_in), fan_in the product of all but the first dimension
      (the last one for the embedding-like 2-d ``*positional_embedding``, ``token_embedding.weight``,
      ``text_projection``, ``visual.proj``), which keeps activations of order 1 through 12 blocks.
    """
    out: dict[str, torch.Tensor] = {}
    for name in sorted(shapes):
        shape = torch.Size(shapes[name])
        generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        if name == "logit_scale":
            out[name] = torch.full(shape, math.log(100.0))
            continue
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        if len(shape) <= 1:
            out[name] = (1.0 + 0.02 * noise) if name.endswith(".weight") else 0.02 * noise
            continue
        if name.endswith(("positional_embedding", "token_embedding.weight", "text_projection", "visual.proj")):
            fan_in = shape[-1] if name.endswith("embedding") or name.endswith("embedding.weight") else shape[0]
        else:
            fan_in = math.prod(shape[1:])
        out[name] = noise / math.sqrt(fan_in)
    return out


def reference_step(method, images: torch.Tensor, labels: torch.Tensor, *, on_features: bool = False):
    """One training step as the reference tests compare it: (loss, its terms as numbers, logits), the gradients left in
    the trainable tensors' `.grad`. ``on_features``: the step on the frozen features (`feature_loss`), as a
    method that trains on stored features takes it."""
    method.prepare_training()
    method.train()
    if on_features:
        with torch.no_grad():
            inputs = method.encode_images(images)
        loss = method.feature_loss(inputs, labels)
    else:
        inputs = images
        loss = method.training_loss(images, labels)
    for p in method.trainable_parameters().values():
        p.grad = None
    method.backward(loss, lambda x: x)
    with torch.no_grad():
        classifier = method.classifier()
        logits = method.logits_from_features(inputs, classifier) if on_features else method.logits(images, classifier)
    return loss.total, loss.term_values(), logits
