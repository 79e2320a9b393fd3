"""The base every method builds on, and the registry that names them.

A method says what is trainable, what it adds to the model and what its loss adds; the training and
evaluation loop lives in `clipfit.engine` and is shared by all of them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import Backbone
from ..data.samples import check_template
from ..errors import ClipFitError
from ..text_encoding import fp32, normalize_fp32


@dataclass
class MethodConfig:
    """Options of a method; subclasses add theirs, and check their values in `check`."""

    def check(self) -> None:
        """Raise `ClipFitError` naming the option whose value the method cannot use."""


class Method(nn.Module):
    """Classify images by cosine similarity against class features; train what `trainable_parameters` names."""

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    # Methods that do not train (zero-shot) skip the training loop entirely.
    trains: ClassVar[bool] = True

    def __init__(self, backbone: Backbone, classnames: list[str], template: str, config: MethodConfig):
        super().__init__()
        config.check()
        self.clip = backbone.model
        self.backbone = backbone
        self.template = template
        self.config = config
        self.clip.requires_grad_(False)
        # Remarks for the user about how the method applies to this backbone.
        self.notes: list[str] = []
        self.set_classes(classnames)

    @classmethod
    def protocol_defaults(cls, protocol: str, dataset: str) -> dict:
        """Method options that depend on the protocol or the dataset's registry name (filled in where the
        user gave none). Method-specific values live here, never in the dataset's spec."""
        return {}

    @classmethod
    def optim_defaults(cls, protocol: str, dataset: str) -> dict:
        """`OptimConfig` fields whose paper value depends on the protocol or dataset (filled in where the
        user gave none)."""
        return {}

    def train(self, mode: bool = True) -> Method:
        """Switch the method's own modules to training mode; the frozen backbone always stays in eval mode.

        `nn.Module.train` would also switch the frozen CLIP: a ResNet tower's BatchNorms would update
        their running statistics (which no adapter file saves) and drop-path would turn on in towers that
        have it. The trainable tensors CLIPFit selects inside the backbone (LayerNorms, Linear biases)
        behave the same in either mode.
        """
        super().train(mode)
        self.clip.eval()
        return self

    def set_classes(self, classnames: list[str]) -> None:
        """Point the classifier at a class list (the training classes, or new ones for evaluation)."""
        check_template(self.template)
        self.classnames = list(classnames)
        self.prompts = [self.template.format(name) for name in self.classnames]
        self._check_prompt_lengths()
        self.register_buffer("prompt_tokens", self.backbone.tokenize(self.prompts), persistent=False)

    def _check_prompt_lengths(self) -> None:
        """The tokenizer would silently cut a prompt longer than the text tower's context, dropping its
        end (the class name, often) and making prompts identical: refuse it, naming the class."""
        tokenizer = self.backbone.tokenizer
        context, encode = getattr(tokenizer, "context_length", None), getattr(tokenizer, "encode", None)
        if context is None or encode is None:  # a Hugging Face tokenizer: no token count to check
            return
        for name, prompt in zip(self.classnames, self.prompts):
            length = len(encode(prompt)) + 2  # start- and end-of-text tokens
            if length > context:
                raise ClipFitError(f"class {name!r}: prompt {prompt!r} is {length} tokens, longer than the text "
                                   f"tower's context of {context}; shorten the class name or the template")

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Trainable tensors by their name in the backbone's state dict (the adapter file's keys)."""
        return {}

    def parameter_groups(self) -> dict[str, int]:
        """Trainable parameter counts per group, for `clipfit params` and run summaries."""
        return {}

    def prepare_training(self) -> None:
        """Compute once, before the first step, whatever the loss compares against."""

    # Precision. The towers run in whatever precision the engine's autocast (or fp16 weights) gives; every
    # feature is normalised, every cosine similarity and logit and every loss term computed in fp32 from
    # there, outside autocast, for every method: a bf16 cosine is rounded to 2^-9 near 1, which would turn
    # a distillation term of order 1e-5 into rounding noise (and the CPU's autocast, unlike CUDA's, keeps
    # softmax and normalisation in bf16).

    def class_features(self) -> torch.Tensor:
        """Unit-norm fp32 text features of the class prompts [classes, dim]."""
        return self.backbone.encode_text(self.prompt_tokens)

    def _image_input_dtype(self, images: torch.Tensor) -> torch.dtype:
        """The dtype the image tower's first Conv/Linear holds (fp16 under the reference's fp16 weights,
        where the input must match it, as CoOp casts `image.type(self.dtype)`)."""
        for module in self.clip.visual.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                return module.weight.dtype
        return images.dtype

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm fp32 image features [batch, dim]."""
        return normalize_fp32(self.clip.encode_image(images.to(self._image_input_dtype(images))))

    def logits(self, images: torch.Tensor, class_features: torch.Tensor) -> torch.Tensor:
        """logit_scale * cos(image, class), in fp32 whatever the autocast around it."""
        image_features = self.image_features(images)
        with fp32(image_features.device):
            return self.backbone.logit_scale.float() * image_features.float() @ class_features.float().t()

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.logits(images, self.class_features())
        with fp32(logits.device):
            loss = F.cross_entropy(logits, labels)
        return loss, {"ce": loss.item()}

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone().contiguous() for name, p in self.trainable_parameters().items()}

    def load_adapter_state(self, state: dict[str, torch.Tensor], source: str = "adapter") -> None:
        params = self.trainable_parameters()
        missing = sorted(set(params) - set(state))
        unexpected = sorted(set(state) - set(params))
        if missing or unexpected:
            raise ClipFitError(f"{source}: does not match method {self.name!r} on this backbone (missing {missing[:3]}, unexpected {unexpected[:3]})")
        with torch.no_grad():
            for name, p in params.items():
                if state[name].shape != p.shape:
                    raise ClipFitError(f"{source}: tensor {name} has shape {tuple(state[name].shape)}, the model expects {tuple(p.shape)}")
                p.copy_(state[name].to(p.dtype))


def select_parameters(model: nn.Module, modules_and_attrs: list[tuple[nn.Module, str]]) -> dict[str, nn.Parameter]:
    """Name the chosen (module, attribute) parameters by their key in `model`'s state dict."""
    wanted = {id(getattr(module, attr)) for module, attr in modules_and_attrs if getattr(module, attr) is not None}
    return {name: p for name, p in model.named_parameters() if id(p) in wanted}


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Add a method under `cls.name`; a name taken by another class raises `ValueError`."""
    if METHODS.get(cls.name, cls) is not cls:
        raise ValueError(f"method {cls.name!r} is already registered (by {METHODS[cls.name].__module__})")
    METHODS[cls.name] = cls
    return cls


def method_config(name: str, options: dict | None = None) -> MethodConfig:
    cls = get_method(name)
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(options or {}) - fields)
    if unknown:
        raise ClipFitError(f"method {name!r} has no option(s) {', '.join(unknown)} (options: {', '.join(sorted(fields)) or 'none'})")
    config = cls.config_class(**(options or {}))
    config.check()
    return config


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise ClipFitError(f"unknown method {name!r} (available: {', '.join(sorted(METHODS))})")
    return METHODS[name]


def build_method(name: str, backbone: Backbone, classnames: list[str], template: str, options: dict | None = None) -> Method:
    cls = get_method(name)
    return cls(backbone, classnames, template, method_config(name, options))
