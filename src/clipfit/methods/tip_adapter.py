"""Tip-Adapter and Tip-Adapter-F: a cache of the few-shot images' features, training-free or fine-tuned.

Zhang et al., "Tip-Adapter: Training-free Adaption of CLIP for Few-shot Classification" (ECCV 2022);
official code gaopengcuhk/Tip-Adapter@d0e2d6f (`main.py`, `utils.py`, `configs/*.yaml`; the recipe:
`recipes/tip_adapter.yaml`).

Tip-Adapter is training-free: the cache keys are the few-shot training images' features, each the average
of 10 augmented views (RandomResizedCrop + flip, the run's training transform) renormalised, [N*K, d]; the
values their one-hot labels [N*K, classes]. Logits of a unit-norm feature f:
``logit_scale * f W^T + alpha * exp(-beta * (1 - f keys^T)) values`` with W the class prompts' features
(the code's `100 * f W`: CLIP's logit scale, 100 for OpenAI's weights). alpha and beta are searched on
the few-shot validation split over the code's grid (`search_hp`: 200 betas 0.1 + i (beta_max - 0.1) /
200, 20 alphas likewise, strictly better replaces), with each dataset's config (ImageNet's for a dataset
without one). The official search runs on the full validation split (the TEST split for ImageNet);
ours on the few-shot validation images Dassl draws (min(K, 4) per class). Alpha 0 is zero-shot CLIP
exactly. The cache names only the training classes: no base-to-new.

Tip-Adapter-F (`main.py` `run_tip_adapter_F`) then fine-tunes the cache keys (N*K x d parameters:
ViT-B/16 ImageNet 16-shot 8,192,000), values and CLIP frozen; cross-entropy of the combined logits with
alpha and beta at their initial values; AdamW (lr 0.001, eps 1e-4, weight decay 0.01), cosine over all
iterations stepped per iteration, batch 256, 20 epochs (EuroSAT 100); then alpha and beta are searched on
validation with the tuned keys. The official code keeps the epoch with the best TEST accuracy and reports
the better of that and the searched model; ours keeps the last epoch and selects only on validation.
Default augmentation "cached-views" (the cache's 10 views, one drawn per image and epoch) is approximate:
the official draws a fresh augmentation every epoch ("fresh").

A prompt ensemble (`--templates`) is W, the zero-shot classifier of both (the cache is unchanged), as the
official code builds W: `utils.py` `clip_classifier` averages each dataset's template list
(`datasets/*.py`), one template but for ImageNet's 7 (`datasets/imagenet.py`: `--templates clip-imagenet-7`);
our default is the dataset's one template.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import image_feature_dim
from ..errors import ClipFitError
from ..text_encoding import fp32, normalize_fp32
from .base import Method, MethodConfig, Regime
from .frozen_features import VIEWS, FrozenFeatureMixin, check_views
from .registry import register_method

# Without a recipe value (options left None): ImageNet's config (`configs/imagenet.yaml`), init alpha and the
# search's [beta_max, alpha_max]; the per-dataset values are the recipe's (every config: init_beta 1).
DEFAULT_INIT_ALPHA = 1.17
DEFAULT_SEARCH_SCALE = (7, 3)
TIP_SEARCH_STEPS = (200, 20)  # beta, alpha


@dataclass
class TipAdapterConfig(MethodConfig):
    alpha: float | None = None  # residual weight of the cache logits; None: the dataset's init_alpha
    beta: float = 1.0  # sharpness of the affinities
    beta_max: float | None = None  # the search's ranges; None: the dataset's search_scale
    alpha_max: float | None = None
    search: bool = True  # search alpha and beta on the validation split
    views: int = VIEWS  # the cache: each key the average of this many augmented views

    def check(self):
        check_views(getattr(self, "augmentation", None), self.views)
        for name in ("alpha", "beta", "beta_max", "alpha_max"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                          and math.isfinite(value) and value >= 0):
                raise ClipFitError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("beta_max", "alpha_max"):  # the grid runs from 0.1 up to its maximum
            value = getattr(self, name)
            if value is not None and value <= 0.1:
                raise ClipFitError(f"{name} must be above 0.1, where the search grid starts; got {value!r}")


@dataclass
class TipAdapterFConfig(TipAdapterConfig):
    augmentation: str = "cached-views"  # how the keys' fine-tuning reads images


@register_method
class TipAdapter(FrozenFeatureMixin, Method):
    name = "tip-adapter"
    description = ("Tip-Adapter (Zhang et al., ECCV 2022): training-free cache of few-shot features, "
                   "alpha/beta searched on validation")
    config_class = TipAdapterConfig
    classifies_unseen_classes = False
    ensemble_role = "classifier"  # W, the zero-shot classifier the cache logits add to

    def add_modules(self):
        dim = image_feature_dim(self.clip)
        # Sized by the few-shot set in `fit`; an adapter file's shapes when loaded.
        self.register_buffer("cache_keys", torch.zeros(0, dim))
        self.register_buffer("cache_values", torch.zeros(0, len(self.classnames)))
        alpha = DEFAULT_INIT_ALPHA if self.config.alpha is None else self.config.alpha
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.register_buffer("beta", torch.tensor(float(self.config.beta)))

    @classmethod
    def training_regime(cls, config):
        return Regime(fit=True, optimise=None, views=config.views)  # the cache's views

    @classmethod
    def searches_on_validation(cls, options):
        return options.get("search", True)  # alpha and beta

    def parameter_groups(self):
        return {}

    def load_adapter_state(self, state, source="adapter"):
        # The cache's size is the few-shot set's, known only from the file.
        for name in ("cache_keys", "cache_values"):
            current, new = getattr(self, name), state.get("method." + name)
            if new is not None and new.dim() == 2 and new.shape[1] == current.shape[1]:
                empty = torch.zeros(new.shape, device=current.device, dtype=current.dtype)
                setattr(self, name, nn.Parameter(empty) if isinstance(current, nn.Parameter) else empty)
        super().load_adapter_state(state, source)

    def export_state(self):
        extra = {"cache_keys": self.cache_keys, "cache_values": self.cache_values, "alpha": self.alpha,
                 "beta": self.beta, "class_features": self.class_features()}
        return "cache", self.clip.state_dict(), extra, {}

    def fit(self, features, labels, val):
        self.cache_keys = normalize_fp32(features.mean(dim=0))
        self.cache_values = F.one_hot(labels, len(self.classnames)).float()
        record = {"cache": len(labels)}
        if val is not None and self.config.search:
            record.update(self.search(*val))
        return record

    def affinity(self, unit_features: torch.Tensor) -> torch.Tensor:
        """Cosine of each unit-norm image feature with each cache key [batch, N*K]."""
        return unit_features @ self.cache_keys.t()

    def tip_logits(self, clip_logits, affinity, alpha, beta):
        return clip_logits + alpha * torch.exp(-beta * (1 - affinity)) @ self.cache_values

    def logits_from_features(self, image_features, classifier):
        with fp32(image_features.device):
            f = normalize_fp32(image_features)
            clip_logits = super().logits_from_features(f, classifier)
            return self.tip_logits(clip_logits, self.affinity(f), self.alpha, self.beta)

    def search(self, val_features: torch.Tensor, val_labels: torch.Tensor) -> dict[str, float]:
        """alpha and beta by `search_hp`'s grid on the validation features; set in place."""
        with fp32(val_features.device):
            f = normalize_fp32(val_features)
            clip_logits = super().logits_from_features(f, self.class_features())
            affinity = self.affinity(f)
            beta_steps, alpha_steps = TIP_SEARCH_STEPS
            beta_max, alpha_max = DEFAULT_SEARCH_SCALE
            beta_max = beta_max if self.config.beta_max is None else self.config.beta_max
            alpha_max = alpha_max if self.config.alpha_max is None else self.config.alpha_max
            betas = [0.1 + i * (beta_max - 0.1) / beta_steps for i in range(beta_steps)]
            alphas = [0.1 + i * (alpha_max - 0.1) / alpha_steps for i in range(alpha_steps)]
            best = (0.0, float(self.alpha), float(self.beta))
            for beta in betas:
                cache = torch.exp(-beta * (1 - affinity)) @ self.cache_values
                for alpha in alphas:
                    accuracy = 100.0 * ((clip_logits + alpha * cache).argmax(-1) == val_labels).float().mean().item()
                    if accuracy > best[0]:
                        best = (accuracy, alpha, beta)
        self.alpha.fill_(best[1]), self.beta.fill_(best[2])
        return {"val_accuracy": best[0], "alpha": best[1], "beta": best[2]}


@register_method
class TipAdapterF(TipAdapter):
    name = "tip-adapter-f"
    description = ("Tip-Adapter-F (Zhang et al., ECCV 2022): the cache's keys fine-tuned, "
                   "alpha/beta searched on validation")
    config_class = TipAdapterFConfig

    def add_modules(self):
        super().add_modules()
        dim = image_feature_dim(self.clip)
        del self.cache_keys
        self.cache_keys = nn.Parameter(torch.zeros(0, dim))

    @classmethod
    def training_regime(cls, config):
        """The cache fitted from its views, then its keys optimised on those views or on fresh images."""
        return Regime(fit=True, optimise="features" if config.augmentation == "cached-views" else "images",
                      views=config.views)

    def parameter_groups(self):
        if not len(self.cache_keys):
            self.notes.append("the cache keys are N x K x d, sized by the few-shot set (0 until it is fitted)")
        return {"cache_keys": self.cache_keys.numel()}

    def fit(self, features, labels, val):
        keys = normalize_fp32(features.mean(dim=0))
        self.cache_keys = nn.Parameter(keys)
        self.cache_values = F.one_hot(labels, len(self.classnames)).float()
        return {"cache": len(labels)}

    def after_training(self, val_features, val_labels):
        return self.search(val_features, val_labels) if self.config.search else None
