"""Zero-shot CLIP: the pretrained model, class prompts as the classifier, nothing trained.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (ICML 2021);
official code openai/CLIP. Nothing trains, so its recipe (`recipes/zeroshot.yaml`) sets nothing.

The classifier is the dataset's one template by default, as the PEFT papers report zero-shot CLIP;
`--templates` averages the class features over a prompt ensemble as the CLIP paper does (Sec. 3.1.4;
`clipfit.templates`: its 80 ImageNet templates, its per-dataset sets).
"""

from .base import NO_TRAINING, Method
from .registry import register_method


@register_method
class ZeroShot(Method):
    name = "zeroshot"
    description = "zero-shot CLIP (Radford et al., 2021): the class prompts' text features, nothing trained"
    ensemble_role = "classifier"

    @classmethod
    def training_regime(cls, config):
        return NO_TRAINING
