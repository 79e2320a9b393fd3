"""CoOp: learned context vectors shared by all classes, the class token at the end, CE loss.

Zhou et al., "Learning to Prompt for Vision-Language Models" (IJCV 2022); official code
KaiyangZhou/CoOp@ff61507 (`trainers/coop.py`; the recipe, `recipes/coop.yaml`, from its COOP.md,
`scripts/coop/main.sh` and `configs/trainers/CoOp/vit_b16*.yaml`). The prompt learner and what every
prompt method shares: `prompt_learner.py`.

Defaults: few-shot 16 random context vectors, batch 32, lr 0.002, epochs 50 / 100 / 100 / 200 / 200 for
1 / 2 / 4 / 8 / 16 shots (ImageNet 50); base-to-new as CoCoOp's paper ran CoOp (`vit_b16_ctxv1`): 4
vectors initialised from "a photo of a", 200 epochs (ImageNet 50). SGD, 1 warm-up epoch at 1e-5, cosine
per epoch. `coop+ln` also trains the image LayerNorms (CLIPFit's Table 4, "+ updating LayerNorm").
A prompt ensemble (`--templates`) is refused: the classifier is the learned prompt itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..text_encoding import PromptContext, encode_prompts
from .base import Method, MethodConfig, train_image_layernorms
from .prompt_learner import PromptLearner, check_context
from .registry import register_method, register_variant


@dataclass
class CoOpConfig(MethodConfig):
    # None: the number of words of ctx_init (CoOp's rule), 16 without one.
    n_ctx: int | None = None
    # Words whose embeddings initialise the context ("a photo of a"); "" for random N(0, 0.02^2) vectors.
    ctx_init: str = ""
    # Also train the image tower's LayerNorms (CLIPFit Table 4, "+ updating LayerNorm").
    layernorm: bool = False

    def check(self):
        check_context(self.n_ctx, self.ctx_init)


@register_method
class CoOp(Method):
    name = "coop"
    prompt_source = "the context (n_ctx, ctx_init)"
    description = "CoOp (Zhou et al., IJCV 2022): learned context vectors shared by all classes"
    config_class = CoOpConfig
    ensemble_refusal = ("its classifier is the learned prompt (context vectors), not a hand-written template, so "
                        "there is nothing for an ensemble to average")

    def add_modules(self):
        self.prompt_learner = PromptLearner(self.backbone, self.config.n_ctx, self.ctx_init())
        self.image_norms = train_image_layernorms(self) if self.config.layernorm else {}

    def ctx_init(self) -> str:
        return self.config.ctx_init

    def export_state(self):
        # The learned context only shapes the class text features: the run's classes need nothing more.
        return "class_features", self.clip.state_dict(), {"class_features": self.class_features()}, {}

    def class_prompts(self, classnames):
        return self.prompt_learner.prompts(classnames)

    def hand_written_prompts(self, template):
        # Underscores read as spaces, as the official prompt learners fill their hand-written templates.
        return [template.format(name.replace("_", " ")) for name in self.classnames]

    def backbone_parameters(self):
        return dict(self.image_norms)

    def parameter_groups(self):
        groups = {"context vectors": self.prompt_learner.ctx.numel()}
        if self.image_norms:
            groups["image LayerNorms"] = sum(p.numel() for p in self.image_norms.values())
        return groups

    def context(self) -> PromptContext:
        return PromptContext((self.prompt_learner.ctx,))

    def class_features(self):
        return encode_prompts(self.clip, self.prompt_tokens, context=self.context())


register_variant(CoOp, "coop+ln", "CoOp with the image LayerNorms also trained (CLIPFit Table 4, +UL)", layernorm=True)
