"""Linear probe: L2-regularised logistic regression on the frozen image features, C searched on validation.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (ICML 2021), App.
A.3; as CoOp's `lpclip/` runs it for the few-shot tables (KaiyangZhou/CoOp@ff61507 `lpclip/`; the recipe:
`recipes/linear_probe.yaml`).

Multinomial logistic regression (scikit-learn, L-BFGS, ``max_iter`` 1000) on the frozen image tower's
output features (after the projection, unnormalised: `lpclip/feat_extractor.py`), the training images
under the evaluation transform (no augmentation: lpclip's extractor reads every split with the test
transform). The inverse strength C is searched on the few-shot validation split as lpclip's
`linear_probe.py` does: a sweep over 1e6 .. 1e-6 by factors of 100, then 8 rounds of bisection in log10
space from [peak / 10, peak * 10]; the classifier kept is the one with the best validation accuracy of
every C tried (the smaller C on ties). lpclip keeps the better endpoint of the last round, which can be
worse on validation than an earlier one; the CLIP paper's intent is the best on validation. Fitted on the
training images only (lpclip; the CLIP paper refits on train+val). Our few-shot images are Dassl's draw
(the one every method here sees), not lpclip's own numpy draw. 513 x C parameters on ViT-B/16. A linear
head cannot classify classes it did not train on: no base-to-new. No text features: `--templates` is refused.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..backbone import image_feature_dim
from ..errors import ClipFitError
from ..text_encoding import fp32
from .base import Method, MethodConfig, Regime
from .frozen_features import FrozenFeatureMixin
from .registry import register_method

# lpclip's first sweep of the inverse regularisation C, then 8 bisection rounds in log10 space around the peak.
C_SWEEP = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)
BISECTION_ROUNDS = 8
# Without a validation image (a split with none): the C of openai/CLIP's README linear-probe example.
C_WITHOUT_VALIDATION = 0.316


@dataclass
class LinearProbeConfig(MethodConfig):
    max_iter: int = 1000  # L-BFGS iterations (lpclip, the CLIP paper)

    def check(self):
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ClipFitError(f"max_iter must be a whole number >= 1, got {self.max_iter!r}")


@register_method
class LinearProbe(FrozenFeatureMixin, Method):
    name = "linear-probe"
    description = ("linear probe (Radford et al., 2021; CoOp's lpclip): logistic regression on frozen image features, "
                   "C searched on validation")
    config_class = LinearProbeConfig
    ensemble_refusal = "it classifies with a linear head on the image features, without text features to average"
    classifies_unseen_classes = False

    @classmethod
    def training_regime(cls, config):
        return Regime(fit=True, optimise=None, views=0)  # the un-augmented training images, once

    @classmethod
    def searches_on_validation(cls, options):
        return True  # C

    def add_modules(self):
        self.head = nn.Linear(image_feature_dim(self.clip), len(self.classnames)).requires_grad_(False)
        nn.init.zeros_(self.head.weight), nn.init.zeros_(self.head.bias)

    def parameter_groups(self):
        return {"head": self.head.weight.numel() + self.head.bias.numel()}

    def classifier(self):
        return None

    def logits_from_features(self, image_features, classifier):
        with fp32(image_features.device):
            return self.head(image_features.float())

    def export_state(self):
        return "linear_head", self.clip.state_dict(), {"head.weight": self.head.weight, "head.bias": self.head.bias}, {}

    def _fit_c(self, c: float, x: np.ndarray, y: np.ndarray):
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # a tiny C or huge C on a few images
            # 1-shot: as many classes as images, which scikit-learn takes for a regression target.
            warnings.filterwarnings("ignore", message="The number of unique classes")
            return LogisticRegression(C=c, max_iter=self.config.max_iter).fit(x, y)

    def search_c(self, x: np.ndarray, y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray):
        """lpclip's search of C on validation: [(C, validation accuracy, classifier)] in the order tried."""
        tried = []

        def score(c: float):
            clf = self._fit_c(c, x, y)
            tried.append((c, float((clf.predict(val_x) == val_y).mean()), clf))
            return tried[-1][1]

        accuracies = [score(c) for c in C_SWEEP]
        peak = C_SWEEP[int(np.argmax(accuracies))]  # the first of equals, as np.argmax (lpclip)
        left, right = math.log10(peak) - 1, math.log10(peak) + 1
        for _ in range(BISECTION_ROUNDS):
            acc_left, acc_right = score(10 ** left), score(10 ** right)
            middle = (left + right) / 2
            left, right = (middle, right) if acc_left < acc_right else (left, middle)
        return tried

    def fit(self, features, labels, val):
        x = features[0].double().cpu().numpy()
        y = labels.cpu().numpy()
        classes = len(self.classnames)
        if val is None:
            c, val_accuracy, clf, tried = C_WITHOUT_VALIDATION, float("nan"), self._fit_c(C_WITHOUT_VALIDATION, x, y), 1
            self.notes.append(f"no validation images: C = {C_WITHOUT_VALIDATION} (openai/CLIP's README example)")
        else:
            trials = self.search_c(x, y, val[0].double().cpu().numpy(), val[1].cpu().numpy())
            best = max(t[1] for t in trials)
            c, val_accuracy, clf = min((t for t in trials if t[1] == best), key=lambda t: t[0])
            tried = len(trials)
        # scikit-learn drops classes absent from the training set; a column of zeros stands for them.
        weight = torch.zeros(classes, x.shape[1], dtype=torch.float64)
        bias = torch.full((classes,), -1e4 if len(clf.classes_) < classes else 0.0, dtype=torch.float64)
        coef, intercept = torch.from_numpy(clf.coef_), torch.from_numpy(clf.intercept_)
        if len(clf.classes_) == 2 and classes >= 2:  # binary: one row for class 1 (logit difference)
            coef, intercept = torch.cat([-coef / 2, coef / 2]), torch.cat([-intercept / 2, intercept / 2])
        index = torch.from_numpy(clf.classes_).long()
        weight[index], bias[index] = coef, intercept
        with torch.no_grad():
            self.head.weight.copy_(weight.float()), self.head.bias.copy_(bias.float())
        return {"C": c, "val_accuracy": 100.0 * val_accuracy, "fits": tried}
