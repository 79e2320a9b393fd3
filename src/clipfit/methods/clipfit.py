"""CLIPFit: tune the text MLPs' output-projection biases and the image tower's LayerNorms.

The loss adds a distillation term that keeps the tuned class text features close to the pretrained
ones: CE + beta * (1 - mean_i cos(w_i, w_i_clip)). The paper's eq. 5 alternative, an MSE between the
tuned and pretrained text biases, is `regularizer="bias-mse"`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..backbone import image_layernorms, text_mlp_output_projections
from ..errors import ClipFitError
from .base import Method, MethodConfig, register_method, select_parameters

REGULARIZERS = ("kd", "bias-mse", "none")


@dataclass
class CLIPFitConfig(MethodConfig):
    # None means the protocol's default (NOTES.md: 8 base-to-new/cross-dataset, 2 distribution shift, few-shot 2 or 8).
    beta: float | None = None
    regularizer: str = "kd"


@register_method
class CLIPFit(Method):
    name = "clipfit"
    config_class = CLIPFitConfig

    def __init__(self, backbone, classnames, template, config: CLIPFitConfig):
        if config.regularizer not in REGULARIZERS:
            raise ClipFitError(f"clipfit: regularizer must be one of {', '.join(REGULARIZERS)}, got {config.regularizer!r}")
        if config.beta is None:
            raise ClipFitError("clipfit: beta is unset; the protocol fills in its default")
        super().__init__(backbone, classnames, template, config)
        self.text_biases = select_parameters(self.clip, [(linear, "bias") for linear in text_mlp_output_projections(self.clip)])
        self.image_norms = select_parameters(
            self.clip, [(norm, attr) for norm in image_layernorms(self.clip) for attr in ("weight", "bias")]
        )
        if not self.image_norms:
            self.notes.append("the image tower has no LayerNorm (a ResNet): only the text biases train")
        for p in self.trainable_parameters().values():
            p.requires_grad_(True)
        self.pretrained_class_features: torch.Tensor | None = None
        self.pretrained_biases: dict[str, torch.Tensor] = {}

    @classmethod
    def protocol_defaults(cls, protocol, dataset):
        betas = {"base2new": 8.0, "cross-dataset": 8.0, "distribution-shift": 2.0, "few-shot": dataset.fewshot_beta}
        return {"beta": betas.get(protocol, 8.0)}

    def trainable_parameters(self):
        return {**self.text_biases, **self.image_norms}

    def parameter_groups(self):
        return {
            "text MLP output-projection biases": sum(p.numel() for p in self.text_biases.values()),
            "image LayerNorms": sum(p.numel() for p in self.image_norms.values()),
        }

    def prepare_training(self):
        with torch.no_grad():
            self.pretrained_class_features = self.class_features().detach()
        self.pretrained_biases = {name: p.detach().clone() for name, p in self.text_biases.items()}

    def regularization(self, class_features: torch.Tensor) -> torch.Tensor:
        if self.config.regularizer == "kd":
            cos = F.cosine_similarity(class_features, self.pretrained_class_features, dim=-1)
            return 1.0 - cos.mean()
        if self.config.regularizer == "bias-mse":
            tuned = torch.cat([p.flatten() for p in self.text_biases.values()])
            pretrained = torch.cat([self.pretrained_biases[name].flatten() for name in self.text_biases])
            return F.mse_loss(tuned, pretrained)
        return class_features.new_zeros(())

    def training_loss(self, images, labels):
        if self.pretrained_class_features is None:
            raise ClipFitError("clipfit: prepare_training() must run before the first step")
        # One text pass feeds both the logits and the distillation term.
        class_features = self.class_features()
        ce = F.cross_entropy(self.logits(images, class_features), labels)
        reg = self.regularization(class_features)
        loss = ce + self.config.beta * reg
        return loss, {"ce": ce.item(), self.config.regularizer: reg.item()}
