"""CLIPFit: tune the text MLPs' output-projection biases and the image tower's LayerNorms.

The loss adds a distillation term that keeps the tuned class text features close to the pretrained
ones: CE + beta * (1 - mean_i cos(w_i, w_i_clip)) (paper eq. 4; the official code has the `1 -`). The
paper's eq. 5 alternative, an MSE between the tuned and pretrained text biases, is
`regularizer="bias-mse"`. Defaults from the paper and the official code (minglllli/CLIPFit, its Dassl
configs): NOTES.md.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..backbone import image_layernorms, text_mlp_output_projections
from ..errors import ClipFitError
from ..text_encoding import fp32, normalize_fp32
from .base import Method, MethodConfig, register_method, select_parameters

REGULARIZERS = ("kd", "bias-mse", "none")

# The paper's epochs: 10 for ImageNet and Food101, 100 for every other dataset (and for users' own data).
SHORT_SCHEDULE_DATASETS = {"imagenet": 10, "food101": 10}
# Few-shot beta: 2, except SUN397 and DTD (8); base-to-new and cross-dataset 8, distribution shift 2.
FEWSHOT_BETA = {"sun397": 8.0, "dtd": 8.0}
PROTOCOL_BETA = {"base2new": 8.0, "cross-dataset": 8.0, "distribution-shift": 2.0}


@dataclass
class CLIPFitConfig(MethodConfig):
    # None means the protocol's default (NOTES.md: 8 base-to-new/cross-dataset, 2 distribution shift, few-shot 2 or 8).
    beta: float | None = None
    regularizer: str = "kd"

    def check(self):
        if self.regularizer not in REGULARIZERS:
            raise ClipFitError(f"method clipfit: regularizer must be one of {', '.join(REGULARIZERS)}, got {self.regularizer!r}")
        if self.beta is not None and not (math.isfinite(self.beta) and self.beta >= 0):
            raise ClipFitError(f"method clipfit: beta must be a finite number >= 0, got {self.beta!r}")


@register_method
class CLIPFit(Method):
    name = "clipfit"
    config_class = CLIPFitConfig

    def __init__(self, backbone, classnames, template, config: CLIPFitConfig):
        if config.beta is None:
            raise ClipFitError("method clipfit: beta is unset; the protocol fills in its default")
        super().__init__(backbone, classnames, template, config)
        self.text_biases = select_parameters(self.clip, [(linear, "bias") for linear in text_mlp_output_projections(self.clip)])
        self.image_norms = select_parameters(
            self.clip, [(norm, attr) for norm in image_layernorms(self.clip) for attr in ("weight", "bias")]
        )
        if not self.image_norms:
            self.notes.append("the image tower has no LayerNorm (a ResNet): only the text biases train")
        for p in self.trainable_parameters().values():
            p.requires_grad_(True)
        # The untouched pretrained values, taken before any training or adapter load: every training run
        # distils toward the features these give, never toward already-tuned weights.
        self.pretrained_values = {name: p.detach().clone() for name, p in self.trainable_parameters().items()}
        self.pretrained_class_features: torch.Tensor | None = None

    @classmethod
    def protocol_defaults(cls, protocol, dataset):
        if protocol == "few-shot":
            return {"beta": FEWSHOT_BETA.get(dataset, 2.0)}
        return {"beta": PROTOCOL_BETA.get(protocol, 8.0)}

    @classmethod
    def optim_defaults(cls, protocol, dataset):
        return {"epochs": SHORT_SCHEDULE_DATASETS.get(dataset, 100)}

    def trainable_parameters(self):
        return {**self.text_biases, **self.image_norms}

    def parameter_groups(self):
        return {
            "text MLP output-projection biases": sum(p.numel() for p in self.text_biases.values()),
            "image LayerNorms": sum(p.numel() for p in self.image_norms.values()),
        }

    @contextlib.contextmanager
    def _pretrained_weights(self):
        """Temporarily put the pretrained values back into the trainable tensors."""
        params = self.trainable_parameters()
        current = {name: p.detach().clone() for name, p in params.items()}
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(self.pretrained_values[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(current[name])

    def prepare_training(self):
        """The distillation target: the class text features of the *pretrained* model for the current
        classes, computed once per training run (the official `CustomCLIP` computes them once, from the
        untouched CLIP, when it is built).

        The engine calls it under the training steps' autocast, so the target comes from the same forward
        pass (same precision, same kernels) as the tuned features: before the first update the two are
        bit for bit equal and the term is exactly 0, under bf16 and fp16 as in fp32. It is kept in fp32.
        """
        with torch.no_grad(), self._pretrained_weights():
            self.pretrained_class_features = self.class_features().detach().float()

    def regularization(self, class_features: torch.Tensor) -> torch.Tensor:
        """The regulariser, in fp32 (outside autocast) whatever the precision of the forward pass.

        ``kd``: 1 - mean_i cos(w_i, w_i_clip), computed as mean_i |w^_i - w^_i_clip|^2 / 2 on the unit
        vectors w^ (equal to 1 - cos for unit vectors: |a - b|^2 = 2 - 2 a.b). The two agree in exact
        arithmetic and have the same gradient; the squared form is a sum of squares, so it is never
        negative in floating point, and it keeps its relative accuracy near 0 where 1 - cos, a difference
        of two numbers near 1, is rounded to a multiple of 2^-24 (fp32) and can come out negative.
        """
        with fp32(class_features.device):
            if self.config.regularizer == "kd":
                tuned = normalize_fp32(class_features)
                pretrained = normalize_fp32(self.pretrained_class_features)
                return 0.5 * (tuned - pretrained).pow(2).sum(dim=-1).mean()
            if self.config.regularizer == "bias-mse":
                tuned = torch.cat([p.flatten().float() for p in self.text_biases.values()])
                pretrained = torch.cat([self.pretrained_values[name].flatten().float() for name in self.text_biases])
                return F.mse_loss(tuned, pretrained)
            return class_features.new_zeros((), dtype=torch.float32)

    def training_loss(self, images, labels):
        if self.pretrained_class_features is None:
            raise ClipFitError("clipfit: prepare_training() must run before the first step")
        # One text pass feeds both the logits and the distillation term; both, and the loss, in fp32.
        class_features = self.class_features()
        logits = self.logits(images, class_features)
        with fp32(logits.device):
            ce = F.cross_entropy(logits, labels)
        reg = self.regularization(class_features)
        loss = ce + self.config.beta * reg
        return loss, {"ce": ce.item(), self.config.regularizer: reg.item()}
