"""ProGrad: CoOp whose CE gradient, per trainable tensor, loses its component against the gradient toward
the zero-shot CLIP's prediction when the two conflict.

Zhu et al., "Prompt-aligned Gradient for Prompt Tuning" (ICCV 2023); official code
BeierZhu/Prompt-align@1b76203 (`trainers/prograd.py`, Dassl.ProGrad; the recipe, `recipes/prograd.yaml`,
from its RN50 configs, the only ones it ships, and its README).

Per step: g_ce = grad CE(student, y); g_kd = grad of T^2 x mean_b sum_c -softmax(teacher/T) log_softmax
(student/T), the teacher the zero-shot CLIP on the same images with ProGrad's template; if g_ce . g_kd
< 0, g_ce -= lam (g_ce . u) u with u = g_kd / |g_kd|. Only the projected g_ce is applied (the KD loss is
never added). The teacher shares the student's image features: the frozen image tower runs once.
Defaults: 16 vectors, the last ones initialised from the dataset's template (ProGrad's own templates,
`CUSTOM_TEMPLATES`, for the datasets it names) and the first ones zero; few-shot CoOp's epochs by shots
(ImageNet 50), base-to-new 100 epochs (ImageNet 50); batch 32, lr 0.002; lam 1.0 (0.8 for 8 and 16
shots on Flowers102, DTD, EuroSAT, as its README says); T 1.

A prompt ensemble (`--templates`) replaces the teacher's one template: the teacher classifies with CLIP's
average over the ensemble (`Method.ensemble_features`), while the context is still initialised from the
words of `teacher_template` (or the run's template); the classifier stays the learned prompt. The
official code's teacher encodes one template per dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ClipFitError
from ..text_encoding import fp32
from .base import Loss, require_prepared
from .coop import CoOp, CoOpConfig
from .prompt_learner import template_features, template_words
from .registry import register_method


@dataclass
class ProGradConfig(CoOpConfig):
    n_ctx: int | None = 16
    # The teacher's prompt template; None: the run's template (for the official datasets the recipe
    # fills in ProGrad's own). ctx_init defaults to it without " {}.".
    teacher_template: str | None = None
    lam: float = 1.0  # `LOSS.LAMBDA`: how much of the conflicting component is removed
    temperature: float = 1.0  # `LOSS.T`

    def check(self):
        super().check()
        if not (0.0 <= self.lam <= 1.0):
            raise ClipFitError(f"method prograd: lam must lie in [0, 1], got {self.lam!r}")
        if not self.temperature > 0:
            raise ClipFitError(f"method prograd: temperature must be > 0, got {self.temperature!r}")
        if self.teacher_template is not None and "{}" not in self.teacher_template:
            raise ClipFitError(f"method prograd: teacher_template must contain {{}}, got {self.teacher_template!r}")


@register_method
class ProGrad(CoOp):
    name = "prograd"
    description = "ProGrad (Zhu et al., ICCV 2023): CoOp with the CE gradient projected against the zero-shot one"
    config_class = ProGradConfig
    ensemble_role = "target"

    def ctx_init(self):
        # Without one given, the teacher's template words, as ProGrad always initialises (`CTX_INIT: True`).
        return self.config.ctx_init or template_words(self._teacher_template())

    def _teacher_template(self) -> str:
        return self.config.teacher_template or self.template

    def prepare_training(self):
        """The teacher's class features (zero-shot CLIP, ProGrad's template), once per run."""
        self.teacher_features = template_features(self, self._teacher_template())

    def training_loss(self, images, labels):
        require_prepared(self, "teacher_features")
        image_features = self.encode_images(images)
        logits = self.logits_from_features(image_features, self.class_features())
        teacher = self.logits_from_features(image_features, self.teacher_features).detach()
        t = self.config.temperature
        with fp32(logits.device):
            ce = F.cross_entropy(logits, labels)
            kd = t * t * (-(teacher / t).softmax(-1) * (logits / t).log_softmax(-1)).sum(-1).mean()
        # The total is CE alone: `backward` applies CE's gradient, projected away from where it conflicts
        # with the KD term's (which keeps its graph for that).
        return Loss(ce, {"ce": ce, "kd": kd})

    def backward(self, loss, scale):
        """Apply the CE gradient, projected per tensor where it conflicts with the KD gradient
        (Dassl.ProGrad `prograd_backward_and_update`)."""
        params = list(self.trainable_parameters().values())
        kd_grads = torch.autograd.grad(scale(loss.terms["kd"]), params, retain_graph=True, allow_unused=True)
        ce_grads = torch.autograd.grad(scale(loss.total), params, allow_unused=True)
        for p, g_ce, g_kd in zip(params, ce_grads, kd_grads):
            if g_ce is None:
                continue
            if g_kd is not None:
                dot = (g_ce * g_kd).sum()
                if dot < 0:
                    g_ce = g_ce - self.config.lam * dot / (g_kd * g_kd).sum() * g_kd
            p.grad = g_ce
