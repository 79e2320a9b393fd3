"""The PEFT-for-CLIP study's two classifiers (`--type`): the class prompts' text features, or a linear
head on the image features trained with the method (`HeadConfig`, `HeadedMethod`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ClipFitError
from ..text_encoding import fp32, normalize_fp32
from .base import Method, MethodConfig

HEAD_TYPES = ("vision", "vision-language")


@dataclass
class HeadConfig(MethodConfig):
    """The PEFT-for-CLIP study's `--type`: "vision-language" classifies by cosine against the class prompts'
    text features (times CLIP's logit scale), "vision" by a linear head on the image features, trained with
    the method (it cannot name classes it did not train on). Subclasses set the default of their paper."""

    type: str = "vision-language"

    def check(self) -> None:
        if self.type not in HEAD_TYPES:
            raise ClipFitError(f"type must be one of {', '.join(HEAD_TYPES)}, got {self.type!r}")


class HeadedMethod(Method):
    """A method whose classifier is either the class prompts or a linear head (`HeadConfig.type`).

    `encode_images` here returns the method's image features before normalisation, fp32 [batch, dim]
    (what a linear head reads, as the study's `head(image_features)`); the vision-language classifier
    normalises them. With a head, `Method.set_classes` accepts only the class list it was trained on."""

    config_class = HeadConfig
    cli_shortcuts = ("type",)

    @classmethod
    def classifies_unseen(cls, options: dict) -> bool:
        return options.get("type", cls.config_class().type) == "vision-language"

    @property
    def has_head(self) -> bool:
        return self.config.type == "vision"

    @classmethod
    def templates_role(cls, options: dict) -> str | None:
        # The class prompts' features come from the frozen text tower: a prompt ensemble is the classifier.
        return "classifier" if cls.classifies_unseen(options) else None

    @classmethod
    def templates_refusal(cls, options: dict) -> str:
        return "with type=vision it classifies with a linear head, without text features to average"

    def add_head(self, dim: int) -> None:
        """With `type` vision: a Linear(dim -> classes) head with PyTorch's default init (the study's
        `nn.Linear(output_dim, num_classes)`); call from `add_modules`."""
        if self.has_head:
            self.head = nn.Linear(dim, len(self.classnames))

    def classifier(self) -> torch.Tensor | None:
        return None if self.has_head else self.class_features()

    def logits_from_features(self, image_features: torch.Tensor, classifier: torch.Tensor | None) -> torch.Tensor:
        """fp32 logits: the head's output, or logit_scale * cos(image, class prompt)."""
        if self.has_head:
            with fp32(image_features.device):
                return self.head(image_features.float())
        return super().logits_from_features(normalize_fp32(image_features), classifier)

