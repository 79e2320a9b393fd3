"""MaPLe: coupled prompts in the first J blocks of both towers.

Khattak et al., "MaPLe: Multi-modal Prompt Learning" (CVPR 2023); official code
muzairkhattak/multimodal-prompt-learning@69bce21 (the recipe: `recipes/maple.yaml`).

Text side: 2 learned context vectors replace the embeddings after the start-of-text token ("a photo" of
"a photo of a <class>."), and at blocks 2..J the hidden states there are replaced by that block's own
learned text prompt. Image side: each block's visual prompt is a linear coupling function (text width ->
image width) of the same block's text prompt; at the input the coupled prompt is appended after the
patch tokens (before `ln_pre`), at blocks 2..J the last tokens are replaced. Loss: CE.

As the official code runs it (muzairkhattak/multimodal-prompt-learning @69bce21, `trainers/maple.py`,
`clip/model.py`, `configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml`): J = 9, 2 vectors initialised
from the first two tokens of "a photo of a", deep text prompts ~ N(0, 0.02^2), couplings with PyTorch's
default Linear init; batch 4, lr 0.0035, 5 epochs for base-to-new and (no official few-shot recipe exists)
few-shot; the cross-dataset and domain-generalisation config: J = 3, lr 0.0026, 2 epochs. 3,555,072
trainable parameters on ViT-B/16 (the paper's 3.55M). A backbone with fewer than 9 blocks in a tower (the
built-in mini CLIP: 3 text blocks) gets prompts in every block, with a note. The official code casts the
prompts to fp16 inside its forward even in fp32 runs; ours keeps them in the run's precision. A prompt
ensemble (`--templates`) is refused: the classifier is the learned prompt itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..backbone import encode_image_prompted, text_tower, vision_width
from ..errors import ClipFitError
from ..text_encoding import PromptContext, encode_prompts, normalize_fp32
from .base import Method, MethodConfig
from .prompt_learner import PromptLearner, check_context
from .registry import register_method

PAPER_DEPTH = 9


@dataclass
class MaPLeConfig(MethodConfig):
    n_ctx: int = 2
    ctx_init: str = "a photo of a"
    # J: blocks of each tower that get prompts (1: the input only). None: the paper's 9, or every block of
    # a backbone whose shallower tower has fewer (the mini CLIP's 3-block text tower).
    depth: int | None = None

    def check(self):
        check_context(self.n_ctx, self.ctx_init)
        if self.depth is not None and not (isinstance(self.depth, int) and self.depth >= 1):
            raise ClipFitError(f"method maple: depth must be an integer >= 1, got {self.depth!r}")


@register_method
class MaPLe(Method):
    name = "maple"
    prompt_source = "the context (n_ctx, ctx_init)"
    description = "MaPLe (Khattak et al., CVPR 2023): coupled text and image prompts in the first 9 blocks"
    config_class = MaPLeConfig
    ensemble_refusal = ("its classifier is the learned prompt (text prompts coupled to image prompts), not a "
                        "hand-written template, so there is nothing for an ensemble to average")

    def add_modules(self):
        width = vision_width(self.clip)  # BackboneError for a ResNet image tower
        blocks = min(len(text_tower(self.clip).transformer.resblocks), len(self.clip.visual.transformer.resblocks))
        self.depth = self.config.depth or min(PAPER_DEPTH, blocks)
        if self.depth > blocks:
            raise ClipFitError(f"method maple: depth {self.depth} exceeds the towers' {blocks} blocks")
        if self.depth < PAPER_DEPTH and self.config.depth is None:
            self.notes.append(f"the towers have {blocks} blocks: prompts in all of them "
                              f"(the paper's depth is {PAPER_DEPTH})")
        learner = PromptLearner(self.backbone, self.config.n_ctx, self.config.ctx_init)
        text_width = learner.ctx.shape[1]
        device = learner.ctx.device
        learner.proj = nn.Linear(text_width, width).to(device)
        learner.compound_prompts_text = nn.ParameterList(
            [nn.Parameter(learner.ctx.new_empty(learner.n_ctx, text_width).normal_(std=0.02))
             for _ in range(self.depth - 1)])
        learner.compound_prompt_projections = nn.ModuleList(
            [nn.Linear(text_width, width).to(device) for _ in range(self.depth - 1)])
        self.prompt_learner = learner

    @property
    def image_tower_trains(self):
        return True  # its prompts enter the image tower

    def class_prompts(self, classnames):
        return self.prompt_learner.prompts(classnames)

    def parameter_groups(self):
        learner = self.prompt_learner
        return {
            "text prompts": learner.ctx.numel() + sum(p.numel() for p in learner.compound_prompts_text),
            "coupling functions": sum(p.numel() for m in (learner.proj, *learner.compound_prompt_projections)
                                      for p in m.parameters()),
        }

    def class_features(self):
        learner = self.prompt_learner
        context = PromptContext((learner.ctx, *learner.compound_prompts_text))
        return encode_prompts(self.clip, self.prompt_tokens, context=context)

    def visual_prompts(self):
        """The image tower's prompts per block: the coupling function of the same block's text prompt."""
        learner = self.prompt_learner
        deep = zip(learner.compound_prompt_projections, learner.compound_prompts_text)
        return [learner.proj(learner.ctx)] + [f(p) for f, p in deep]

    def encode_images(self, images):
        images = images.to(self._image_input_dtype(images))
        return normalize_fp32(encode_image_prompted(self.clip, images, self.visual_prompts()))
