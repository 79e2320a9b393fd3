"""CLIP-Adapter: a residual bottleneck MLP on the frozen image features.

Gao et al., "CLIP-Adapter: Better Vision-Language Models with Feature Adapters" (IJCV 2023); official code
gaopengcuhk/CLIP-Adapter@08d07f8 (`clip_adapter.py`; the recipe: `recipes/clip_adapter.yaml`).

The visual adapter of its paper and code: a bottleneck Linear(d, d/4, no bias) -> ReLU -> Linear(d/4, d,
no bias) -> ReLU on the frozen image feature f, blended as 0.2 * adapter(f) + 0.8 * f, then cosine against
the class prompts times CLIP's logit scale (one template per dataset, as the official code);
cross-entropy. 131,072 parameters on ViT-B/16 (d = 512; the official file hard-codes RN50's 1024). The
official repository ships no recipe and says to follow CoOp's command: CoOp's SGD, lr 0.002, batch 32, 1
warm-up epoch at 1e-5, cosine, CoOp's epochs (few-shot 50 / 100 / 100 / 200 / 200 by shots; base-to-new
200). ``type`` vision replaces the class prompts by a linear head on the blended feature (the
PEFT-for-CLIP study's `--type vision`; its code instead reads class k off feature dimension k).
`clip-adapter+ln` also trains the image LayerNorms (CLIPFit's Table 4), which rules out cached features.
Default augmentation "cached-views" (10 views encoded once) is approximate: the official code draws a
fresh augmentation every epoch ("fresh"). A prompt ensemble (`--templates`) replaces the class prompts'
features it classifies with (type vision-language; refused with a head); the official code uses the
dataset's one template.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..backbone import image_feature_dim
from ..errors import ClipFitError
from ..text_encoding import fp32
from .base import Regime, train_image_layernorms
from .frozen_features import VIEWS, FrozenFeatureMixin, check_views
from .heads import HeadConfig, HeadedMethod
from .registry import register_method, register_variant


@dataclass
class ClipAdapterConfig(HeadConfig):
    ratio: float = 0.2  # residual ratio: f' = ratio * adapter(f) + (1 - ratio) * f (the paper's 0.2, generic datasets)
    reduction: int = 4  # bottleneck width = feature width / reduction
    layernorm: bool = False  # also train the image tower's LayerNorms (CLIPFit Table 4)
    augmentation: str = "cached-views"
    views: int = VIEWS

    def check(self):
        super().check()
        check_views(self.augmentation, self.views)
        if not (isinstance(self.ratio, (int, float)) and not isinstance(self.ratio, bool) and 0 <= self.ratio <= 1):
            raise ClipFitError(f"ratio must be a number in [0, 1], got {self.ratio!r}")
        if isinstance(self.reduction, bool) or not isinstance(self.reduction, int) or self.reduction < 1:
            raise ClipFitError(f"reduction must be a whole number >= 1, got {self.reduction!r}")
        if self.layernorm and self.augmentation == "cached-views":
            raise ClipFitError("layernorm=True trains the image tower, so its features cannot be cached: "
                               "use augmentation=fresh")


@register_method
class ClipAdapter(FrozenFeatureMixin, HeadedMethod):
    name = "clip-adapter"
    description = "CLIP-Adapter (Gao et al., IJCV 2023): residual bottleneck MLP on the frozen image features"
    config_class = ClipAdapterConfig

    def add_modules(self):
        dim = image_feature_dim(self.clip)
        if self.config.reduction > dim:
            raise ClipFitError(f"option reduction={self.config.reduction} leaves no bottleneck of the {dim}-d feature "
                               f"(width = {dim} / reduction); use at most {dim}")
        hidden = dim // self.config.reduction
        self.adapter = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.ReLU(),
                                     nn.Linear(hidden, dim, bias=False), nn.ReLU())
        self.add_head(dim)
        self.image_norms = train_image_layernorms(self) if self.config.layernorm else {}

    @classmethod
    def training_regime(cls, config):
        if config.augmentation == "cached-views":
            return Regime(optimise="features", views=config.views)
        return Regime()

    def backbone_parameters(self):
        return dict(self.image_norms)

    def parameter_groups(self):
        groups = {"adapter": sum(p.numel() for p in self.adapter.parameters()),
                  "image_layernorm": sum(p.numel() for p in self.image_norms.values())}
        if self.has_head:
            groups["head"] = sum(p.numel() for p in self.head.parameters())
        return {k: v for k, v in groups.items() if v}

    def export_state(self):
        extra = {f"adapter.{name}": p for name, p in self.adapter.state_dict().items()}
        if self.has_head:
            extra.update({f"head.{name}": p for name, p in self.head.state_dict().items()})
        else:
            extra["class_features"] = self.class_features()
        return "adapter", self.clip.state_dict(), extra, {"ratio": self.config.ratio}

    def logits_from_features(self, image_features, classifier):
        with fp32(image_features.device):
            f = image_features.float()
            blended = self.config.ratio * self.adapter(f) + (1 - self.config.ratio) * f
        return super().logits_from_features(blended, classifier)


register_variant(ClipAdapter, "clip-adapter+ln", "CLIP-Adapter + the image LayerNorms (CLIPFit Table 4)",
                 layernorm=True, augmentation="fresh")
