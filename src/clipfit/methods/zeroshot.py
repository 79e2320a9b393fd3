"""Zero-shot CLIP: the pretrained model, class prompts as the classifier, nothing trained.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (ICML 2021);
official code openai/CLIP. Nothing trains, so its recipe (`recipes/zeroshot.yaml`) sets nothing.
"""

from .base import NO_TRAINING, Method
from .registry import register_method


@register_method
class ZeroShot(Method):
    name = "zeroshot"
    description = "zero-shot CLIP (Radford et al., 2021): the class prompts' text features, nothing trained"

    @classmethod
    def training_regime(cls, config):
        return NO_TRAINING
