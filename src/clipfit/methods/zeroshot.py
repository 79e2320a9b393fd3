"""Zero-shot CLIP: the pretrained model, class prompts as the classifier, nothing trained."""

from .base import NO_TRAINING, Method, register_method


@register_method
class ZeroShot(Method):
    name = "zeroshot"
    description = "zero-shot CLIP (Radford et al., 2021): the class prompts' text features, nothing trained"

    @classmethod
    def training_regime(cls, config):
        return NO_TRAINING
