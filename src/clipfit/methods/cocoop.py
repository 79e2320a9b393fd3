"""CoCoOp: the context plus a per-image bias from a meta-network of the image feature, so every image gets
its own class prompts.

Zhou et al., "Conditional Prompt Learning for Vision-Language Models" (CVPR 2022); official code
KaiyangZhou/CoOp@ff61507 (`trainers/cocoop.py`; the recipe, `recipes/cocoop.yaml`, from
`configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml`, every protocol).

Meta-network: Linear(image dim, image dim / 16), ReLU, Linear(-> text width) of the unit image feature;
its output is added to every context vector. The text tower runs once per image over all classes (the
official code does too: CoCoOp's cost); each image's context is the shared prefix of its prompts, computed
once. Defaults: 4 vectors from "a photo of a", batch 1, lr 0.002, 10 epochs. 35,360 trainable parameters
on ViT-B/16. A prompt ensemble (`--templates`) is refused: the classifier is the learned prompt itself.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from ..backbone import image_feature_dim
from ..text_encoding import PromptContext, encode_prompts, fp32
from .base import Method, MethodConfig
from .prompt_learner import PromptLearner, check_context
from .registry import register_method


@dataclass
class CoCoOpConfig(MethodConfig):
    n_ctx: int | None = None
    ctx_init: str = "a photo of a"

    def check(self):
        check_context(self.n_ctx, self.ctx_init)


@register_method
class CoCoOp(Method):
    name = "cocoop"
    prompt_source = "the context (n_ctx, ctx_init)"
    description = "CoCoOp (Zhou et al., CVPR 2022): context conditioned on each image by a meta-network"
    config_class = CoCoOpConfig
    ensemble_refusal = ("its classifier is the learned prompt (context vectors conditioned on each image), not a "
                        "hand-written template, so there is nothing for an ensemble to average")

    def add_modules(self):
        self.prompt_learner = PromptLearner(self.backbone, self.config.n_ctx, self.config.ctx_init)
        image_dim = image_feature_dim(self.clip)
        width = self.prompt_learner.ctx.shape[1]
        self.prompt_learner.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(image_dim, image_dim // 16)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(image_dim // 16, width)),
        ])).to(self.prompt_learner.ctx.device)

    def class_prompts(self, classnames):
        return self.prompt_learner.prompts(classnames)

    def parameter_groups(self):
        meta = sum(p.numel() for p in self.prompt_learner.meta_net.parameters())
        return {"context vectors": self.prompt_learner.ctx.numel(), "meta-network": meta}

    def classifier(self):
        return None  # the class features depend on the image

    def image_class_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """Unit-norm fp32 class features of each image [batch, classes, dim]."""
        bias = self.prompt_learner.meta_net(image_features.to(self.prompt_learner.ctx.dtype))
        contexts = self.prompt_learner.ctx[None] + bias[:, None, :]
        return torch.stack([encode_prompts(self.clip, self.prompt_tokens, context=PromptContext((ctx,)))
                            for ctx in contexts])

    def logits_from_features(self, image_features, classifier=None):
        class_features = self.image_class_features(image_features)
        with fp32(image_features.device):
            cos = torch.einsum("bd,bcd->bc", image_features.float(), class_features.float())
            return self.backbone.logit_scale.float() * cos

    def class_features(self):
        """The classes' features with no image bias (the context alone), for inspection."""
        return encode_prompts(self.clip, self.prompt_tokens, context=PromptContext((self.prompt_learner.ctx,)))
