"""The prompt learner the CoOp family shares: learned context vectors in every class prompt, and helpers.

Every prompt method here (CoOp, CoCoOp, KgCoOp, ProGrad; MaPLe on the text side) learns context vectors
that replace the word embeddings right after the start-of-text token of every class prompt,
`[SOS][ctx_1..ctx_M][class name][.][EOS]` (the class token at the end, one context shared by all classes).
That context lies in the prefix all prompts share, so the text tower computes it once per step and each
class only its own suffix (`clipfit.text_encoding.PromptContext`): the step's cost and memory grow with the
class names' tokens, not with classes x 77 positions as in the official code, whose text encoder runs out
of memory on ImageNet.

Differences from the official code, all deliberate, for every prompt method: the trainable tensors are
fp32 (the official configs keep them in fp16 under `PREC fp16`; `--precision fp16-reference` gives fp16
weights but fp32 prompts), and every loss term is computed in fp32. The image tower stays frozen (no
backward through it) except under the `+ln` variants, which also train its LayerNorms (CLIPFit's Table 4).
"""

from __future__ import annotations

import torch
from torch import nn

from ..backbone import text_tower
from ..errors import ClipFitError
from ..text_encoding import encode_prompts, supports_truncation
from .base import Method


def template_features(method: Method, template: str) -> torch.Tensor:
    """Unit-norm fp32 features [classes, dim] of a hand-written template filled with each class name
    (underscores read as spaces), from the text tower as it is, without a graph: KgCoOp's hand-crafted
    target and ProGrad's zero-shot teacher. With a prompt ensemble (`Method.set_templates`, the "target"
    role), CLIP's average over the ensemble's templates instead (`Method.ensemble_features`); the official
    KgCoOp and ProGrad encode the one template only."""
    if method.templates:
        return method.ensemble_features()
    tokens = method.backbone.tokenize(method.hand_written_prompts(template))
    with torch.no_grad():
        return encode_prompts(method.clip, tokens)


def template_words(template: str) -> str:
    """A template without its class slot and final period ("a photo of a {}." -> "a photo of a"): the words
    ProGrad initialises its context from."""
    return template.replace(" {}.", "").replace("{}", "").strip()


MAX_CONTEXT = 64


def check_context(n_ctx: int | None, ctx_init: str) -> None:
    """`ClipFitError` naming the option when the context would be empty or longer than MAX_CONTEXT vectors."""
    if n_ctx is not None and not (isinstance(n_ctx, int) and not isinstance(n_ctx, bool) and 1 <= n_ctx <= MAX_CONTEXT):
        raise ClipFitError(f"option n_ctx must be an integer from 1 to {MAX_CONTEXT}, got {n_ctx!r}")
    words = len(ctx_init.split())
    if words > MAX_CONTEXT:
        raise ClipFitError(f"option ctx_init has {words} words; the context takes at most {MAX_CONTEXT}")


class PromptLearner(nn.Module):
    """Learned context vectors ``ctx`` [M, width] and the text of the prompts they sit in.

    Initialisation (CoOp `trainers/coop.py`, ProGrad `trainers/prograd.py`, MaPLe `trainers/maple.py`):
    without ``ctx_init``, M = ``n_ctx`` (16 when None) vectors ~ N(0, 0.02^2) and the prompt text
    ``"X X ... X <class>."``; with ``ctx_init`` (a phrase of W words), M = ``n_ctx`` or W when None, the
    prompt text is ``"X" * (M - W) + phrase + " <class>."`` and ``ctx`` holds M - W zero vectors followed by
    the token embeddings of the phrase's first min(M, W) tokens (CoOp: M = W; ProGrad: zeros then its
    template; MaPLe: M = 2 < W, the rest of the phrase stays a fixed part of every prompt). Positions
    ``1 .. M`` of every tokenised prompt are the context; what the placeholder tokens were does not matter.
    """

    def __init__(self, backbone, n_ctx: int | None, ctx_init: str):
        super().__init__()
        tower = text_tower(backbone.model)
        if not supports_truncation(tower):
            # The context sits right after the start-of-text token of a causal tower that pools at its
            # end-of-text token (CLIP's); SigLIP's text tower is bidirectional and pools its last position.
            pool = getattr(tower, "pool_type", getattr(tower, "text_pool_type", None))
            mask = "a causal mask" if getattr(tower, "attn_mask", None) is not None else "no causal mask"
            raise ClipFitError(f"learned text prompts need a causal text tower pooled at its end-of-text token "
                               f"(CLIP's); this one has {mask} and pools {pool!r} (SigLIP's does so)")
        embedding = tower.token_embedding
        width = embedding.weight.shape[1]
        words = ctx_init.split()
        if words:
            n_ctx = n_ctx or len(words)
            tokens = backbone.tokenize([" ".join(words)])[0]
            with torch.no_grad():
                init = embedding(tokens[1 : 1 + min(n_ctx, len(words))]).float()
            pad = max(0, n_ctx - len(words))
            ctx = torch.cat([init.new_zeros(pad, width), init])
            self.prefix_text = " ".join(["X"] * pad + words)
        else:
            n_ctx = n_ctx or 16
            ctx = torch.empty(n_ctx, width, device=embedding.weight.device).normal_(std=0.02)
            self.prefix_text = " ".join(["X"] * n_ctx)
        self.n_ctx = n_ctx
        self.ctx = nn.Parameter(ctx)

    def prompts(self, classnames: list[str]) -> list[str]:
        """The prompt of each class (underscores in names read as spaces, as the official readers do)."""
        return [f"{self.prefix_text} {name.replace('_', ' ')}." for name in classnames]
