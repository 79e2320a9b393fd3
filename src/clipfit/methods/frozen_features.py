"""What the methods on the frozen image features share: the linear probe, CLIP-Adapter and Tip-Adapter(-F).

None of them back-propagates into the image tower (CLIP-Adapter+LN excepted), so by default they train on
image features computed once per training image and view (`clipfit.features`): the option
``augmentation`` says which mode a run used, "cached-views" (``views`` augmented views per image, encoded
once, one drawn per image and epoch) or "fresh" (the tower runs on a new augmentation at every step, as
CLIP-Adapter's and Tip-Adapter-F's official code does). "cached-views" is the faster and approximate one
where the official code draws fresh augmentations; the run's config and log name it, and so does the README.
"""

from __future__ import annotations

import torch

from ..errors import ClipFitError

AUGMENTATIONS = ("cached-views", "fresh")
# Tip-Adapter's cache: 10 augmented views per image (`augment_epoch: 10` in every config of its code).
VIEWS = 10


def check_views(augmentation: str | None, views: int) -> None:
    """The feature-cache options; ``augmentation`` None for a method whose cache is always the views."""
    if augmentation is not None and augmentation not in AUGMENTATIONS:
        raise ClipFitError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}, got {augmentation!r}")
    if isinstance(views, bool) or not isinstance(views, int) or views < 1:
        raise ClipFitError(f"views must be a whole number >= 1, got {views!r}")
    if augmentation == "fresh" and views != VIEWS:
        raise ClipFitError(f"views={views} applies to augmentation=cached-views only "
                           "(fresh augmentations store no views)")


class FrozenFeatureMixin:
    """`encode_images` gives the frozen tower's unnormalised fp32 feature (`model.encode_image`), what the
    linear probe, CLIP-Adapter and Tip-Adapter read (`lpclip/feat_extractor.py` keeps it unnormalised,
    CLIP-Adapter adapts it before normalising)."""

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self._image_input_dtype(images))
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.image_tower_trains):
            return self.clip.encode_image(images).float()

    def class_features(self) -> torch.Tensor:
        # The text tower is frozen: the class prompts' features are the same at every step, computed once
        # per class list and prompt ensemble (and per weight dtype, which the fp16 precision changes).
        key = (tuple(self.prompts), tuple(self.templates or ()), next(self.clip.parameters()).dtype)
        cached = getattr(self, "_class_features", None)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                self._class_features = (key, super().class_features())
        return self._class_features[1]
