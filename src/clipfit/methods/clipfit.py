"""CLIPFit: tune the text MLPs' output-projection biases and the image tower's LayerNorms.

Li et al., "Vision-Language Model Fine-Tuning via Simple Parameter-Efficient Modification" (EMNLP 2024);
official code minglllli/CLIPFit@4dde049 (its Dassl trainer and configs; the recipe: `recipes/clipfit.yaml`).

The loss adds a distillation term that keeps the tuned class text features close to the pretrained
ones: CE + beta * (1 - mean_i cos(w_i, w_i_clip)) (paper eq. 4; the official code has the `1 -`). The
paper's eq. 5 alternative, an MSE between the tuned and pretrained text biases, is
`regularizer="bias-mse"`.

The same class, with other `text` / `image` selections and regularisers, is every inherent-parameter
method of CLIPFit's Tables 5 and 6: its own ablations (Table 6: `clipfit-no-kd`, `clipfit-no-ln`) are
registered below, the BitFit strategies and LayerNorms-only in `bitfit.py`; each is a config of this one
selection method plus its name.

Prompt ensembles (`--templates`). The official code trains, classifies and distils with one prompt per
dataset (`CUSTOM_TEMPLATES` in `trainers/ClipFit.py`, ImageNet "a photo of a {}."): its target w_i_clip is
the untouched CLIP's features of the very prompts the tuned model trains on, so the term starts at 0; no
ensemble appears anywhere in it or in the paper. Here an ensemble can replace the template in the target
only (the "target" role, with ``regularizer="kd"``): w_i_clip becomes the pretrained model's CLIP-style
average over the ensemble, while the tuned text path still trains and classifies with the single template
(an ensemble there would classify with prompts it never trained on). The term then starts above 0 and
pulls the tuned single-template features toward the stronger zero-shot classifier, as KgCoOp's target does
its learned prompt; an option of ours, not the paper's. Without the KD term (BitFit, ``clipfit-no-kd``,
``bias-mse``) there is no target and `--templates` is refused; with no text tensor trained (``ln-only``)
the text tower stays the pretrained one and the ensemble is its classifier, as zero-shot's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..backbone import (
    image_block_biases,
    image_layernorms,
    text_block_biases,
    text_mlp_linears,
    text_mlp_output_projections,
)
from ..errors import ClipFitError
from ..text_encoding import fp32
from .base import Loss, Method, MethodConfig, feature_distance, require_prepared, select_parameters
from .registry import register_method, register_variant

REGULARIZERS = ("kd", "bias-mse", "none")

# What trains in each tower, chosen by the model's structure (CLIPFit Table 5's strategies (a)-(d)):
# selection name -> (group name for `clipfit params`, the (module, attribute) pairs).
TEXT_SELECTIONS = {
    "mlp-output-bias": ("text MLP output-projection biases",  # (d), CLIPFit's
                        lambda model: [(linear, "bias") for linear in text_mlp_output_projections(model)]),
    "mlp-bias": ("text MLP biases", lambda model: [(linear, "bias") for linear in text_mlp_linears(model)]),  # (c)
    "bias": ("text block biases", text_block_biases),  # (b)
    "none": ("", lambda model: []),
}
IMAGE_SELECTIONS = {
    "layernorm": ("image LayerNorms",
                  lambda model: [(norm, attr) for norm in image_layernorms(model) for attr in ("weight", "bias")]),
    "bias": ("image block biases", image_block_biases),  # with text "bias": BitFit (a)
    "none": ("", lambda model: []),
}

@dataclass
class CLIPFitConfig(MethodConfig):
    # None means the protocol's default (the recipe: 8 base-to-new/cross-dataset, 2 distribution shift,
    # few-shot 2 or 8).
    beta: float | None = None
    regularizer: str = "kd"
    text: str = "mlp-output-bias"  # a key of TEXT_SELECTIONS
    image: str = "layernorm"  # a key of IMAGE_SELECTIONS

    def check(self):
        if self.regularizer not in REGULARIZERS:
            raise ClipFitError(f"method clipfit: regularizer must be one of {', '.join(REGULARIZERS)}, "
                               f"got {self.regularizer!r}")
        for option, value, choices in (("text", self.text, TEXT_SELECTIONS), ("image", self.image, IMAGE_SELECTIONS)):
            if value not in choices:
                raise ClipFitError(f"method clipfit: {option} must be one of {', '.join(choices)}, got {value!r}")
        if self.beta is not None and not (math.isfinite(self.beta) and self.beta >= 0):
            raise ClipFitError(f"method clipfit: beta must be a finite number >= 0, got {self.beta!r}")


@register_method
class CLIPFit(Method):
    name = "clipfit"
    description = ("CLIPFit (Li et al., EMNLP 2024): text MLP output-projection biases + image LayerNorms, "
                   "KD to zero-shot")
    config_class = CLIPFitConfig
    cli_shortcuts = ("beta",)  # --beta: the regulariser's weight

    def __init__(self, backbone, classnames, template, config: CLIPFitConfig):
        if config.beta is None and config.regularizer != "none":
            raise ClipFitError("method clipfit: beta is unset; the protocol fills in its default")
        super().__init__(backbone, classnames, template, config)
        self.text_biases = select_parameters(self.clip, TEXT_SELECTIONS[config.text][1](self.clip))
        self.image_norms = select_parameters(self.clip, IMAGE_SELECTIONS[config.image][1](self.clip))
        if not self.text_biases and not self.image_norms:
            raise ClipFitError(f"method {self.name}: nothing to train on this backbone: no text tensor is selected and "
                               f"the image tower has no {IMAGE_SELECTIONS[config.image][0] or 'selected tensor'}")
        if config.image == "layernorm" and not self.image_norms:
            self.notes.append("the image tower has no LayerNorm (a ResNet): only the text biases train")
        for p in self.backbone_parameters().values():
            p.requires_grad_(True)
        # The untouched pretrained values, taken before any training or adapter load: every training run
        # distils toward the features these give, never toward already-tuned weights.
        self.pretrained_values = {name: p.detach().clone() for name, p in self.backbone_parameters().items()}
        self.pretrained_class_features: torch.Tensor | None = None

    @classmethod
    def templates_role(cls, options):
        config = {**dataclasses.asdict(cls.config_class()), **cls.preset, **options}
        if config["text"] == "none":
            return "classifier"  # the text tower stays the pretrained one: its classifier is zero-shot's
        return "target" if config["regularizer"] == "kd" else None

    @classmethod
    def templates_refusal(cls, options):
        config = {**dataclasses.asdict(cls.config_class()), **cls.preset, **options}
        return (f"it trains its text tower on the single template (--template) and classifies with it, and with "
                f"regularizer={config['regularizer']} it has no frozen target for an ensemble to replace")

    def backbone_parameters(self):
        return {**self.text_biases, **self.image_norms}

    def parameter_groups(self):
        groups = {TEXT_SELECTIONS[self.config.text][0]: sum(p.numel() for p in self.text_biases.values()),
                  IMAGE_SELECTIONS[self.config.image][0]: sum(p.numel() for p in self.image_norms.values())}
        return {name: count for name, count in groups.items() if name}

    @contextlib.contextmanager
    def _pretrained_weights(self):
        """Temporarily put the pretrained values back into the trainable tensors."""
        params = self.backbone_parameters()
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
        With a prompt ensemble in the "target" role, the pretrained model's average over the ensemble
        (`Method.ensemble_features`) instead.
        """
        with torch.no_grad(), self._pretrained_weights():
            target = self.ensemble_features() if self._ensemble_role == "target" else self.class_features()
            self.pretrained_class_features = target.detach().float()

    def regularization(self, class_features: torch.Tensor) -> torch.Tensor:
        """The regulariser, in fp32 (outside autocast) whatever the precision of the forward pass.

        ``kd``: 1 - mean_i cos(w_i, w_i_clip) (`feature_distance`: computed as a sum of squares, never
        negative and accurate near 0). ``bias-mse``: the MSE between tuned and pretrained text biases.
        """
        with fp32(class_features.device):
            if self.config.regularizer == "kd":
                return feature_distance(class_features, self.pretrained_class_features)
            if self.config.regularizer == "bias-mse":
                tuned = torch.cat([p.flatten().float() for p in self.text_biases.values()])
                pretrained = torch.cat([self.pretrained_values[name].flatten().float() for name in self.text_biases])
                return F.mse_loss(tuned, pretrained)
            return class_features.new_zeros((), dtype=torch.float32)

    def training_loss(self, images, labels):
        require_prepared(self, "pretrained_class_features")
        # One text pass feeds both the logits and the distillation term; both, and the loss, in fp32.
        class_features = self.class_features()
        logits = self.logits(images, class_features)
        with fp32(logits.device):
            ce = F.cross_entropy(logits, labels)
        if self.config.regularizer == "none":
            return Loss(ce, {"ce": ce})
        reg = self.regularization(class_features)
        return Loss(ce + self.config.beta * reg, {"ce": ce, self.config.regularizer: reg})


# CLIPFit's Table 6 ablations of its own recipe.
register_variant(CLIPFit, "clipfit-no-kd", "CLIPFit Table 6: CLIPFit without the distillation term",
                 regularizer="none")
register_variant(CLIPFit, "clipfit-no-ln", "CLIPFit Table 6: CLIPFit's text biases and distillation, no LayerNorms",
                 image="none")
