"""The base every method builds on, and the registry that names them.

A method says what is trainable (tensors of the backbone it selects by structure, and modules it adds),
how it classifies (`classifier`, `logits_from_features`), what its loss adds (`training_loss`), how a
step's gradients are combined (`backward`) and its paper's optimisation defaults per protocol
(`optim_defaults`); the training and evaluation loop lives in `clipfit.engine` and is shared by all.

Adapter files hold a method's state under two kinds of names that cannot collide: a backbone tensor the
method trains keeps its key in the backbone's state dict (`transformer.resblocks.0.mlp.c_proj.bias`), a
tensor of a module the method adds is named `method.<its name in the method>` (`method.prompt_learner.ctx`);
no open_clip state-dict key starts with `method.`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import Backbone
from ..data.samples import check_template
from ..errors import ClipFitError
from ..text_encoding import fp32, normalize_fp32

# Prefix of the adapter-file keys of tensors a method adds (see the module doc).
ADDED = "method."


@dataclass
class MethodConfig:
    """Options of a method; subclasses add theirs, and check their values in `check`."""

    def check(self) -> None:
        """Raise `ClipFitError` naming the option whose value the method cannot use."""


class Method(nn.Module):
    """Classify images by cosine similarity against class features; train what `trainable_parameters` names.

    Subclasses add modules as attributes (they are saved in adapter files under `method.<name>`), select
    backbone tensors in `backbone_parameters`, and override `class_features` / `logits_from_features` /
    `training_loss` / `backward` where their paper differs.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    # One line for `clipfit methods`, naming the paper (and table) the method comes from.
    description: ClassVar[str] = ""
    # Options a registered variant fixes (`register_variant`): `coop+ln` is `coop` with layernorm=True.
    preset: ClassVar[dict] = {}
    # Methods that do not train (zero-shot) skip the training loop entirely (and draw no few-shot set).
    trains: ClassVar[bool] = True
    # Methods fitted in one pass (a feature cache, a closed-form probe): `fit` sees the training set's
    # stored features once, without gradients, instead of the optimisation loop (or before it, with
    # `optimises_after_fit`); the run folder and adapter file are the same.
    fits: ClassVar[bool] = False
    # A method that fits first and then also optimises (Tip-Adapter-F: the cache, then its keys trained).
    optimises_after_fit: ClassVar[bool] = False
    # Methods that select something on the few-shot validation split (a regularisation strength, the
    # cache's alpha and beta) get its features in `fit` / `after_training`; no method selects on a test split.
    reads_validation: ClassVar[bool] = False
    # What besides the class name makes up a prompt, for the over-long-prompt message.
    prompt_source: ClassVar[str] = "the template"
    # Whether the classifier is built from class names alone, so that it can classify classes it never
    # trained on (base-to-new's "new" half). A linear head cannot: base-to-new refuses it up front.
    classifies_unseen_classes: ClassVar[bool] = True

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
        self.classnames = list(classnames)  # the training classes, for modules sized by them
        self.add_modules()
        self.set_classes(classnames)

    def add_modules(self) -> None:
        """Create the modules the method adds and select the backbone tensors it trains (before the class
        list is set). Random initialisations draw from torch's global generator: the runner seeds it."""

    @classmethod
    def protocol_defaults(cls, protocol: str, dataset: str, shots: int = 16) -> dict:
        """Method options that depend on the protocol, the dataset's registry name or the shots (filled in
        where the user gave none). Method-specific values live here, never in the dataset's spec."""
        return {}

    @classmethod
    def optim_defaults(cls, protocol: str, dataset: str, shots: int = 16) -> dict:
        """`OptimConfig` fields (epochs, batch_size, lr) as the method's paper and official code set them
        for the protocol, dataset and shots (filled in where the user gave none; the rest fall back to
        `OptimConfig`'s own defaults)."""
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
        """Point the classifier at a class list (the training classes, or new ones for evaluation);
        `ClipFitError` for other classes when the classifier holds the training classes only (a head, a cache)."""
        if ("prompt_tokens" in self._buffers and list(classnames) != self.classnames
                and not self.classifies_unseen(dataclasses.asdict(self.config))):
            head = " with type=vision" if getattr(self.config, "type", None) == "vision" else ""
            raise ClipFitError(f"method {self.name!r}{head} classifies only the {len(self.classnames)} classes it was trained "
                               "on (its classifier holds them)" + ("; use type=vision-language to classify other classes" if head else ""))
        check_template(self.template)
        self.classnames = list(classnames)
        self.prompts = self.class_prompts(self.classnames)
        self._check_prompt_lengths()
        self.register_buffer("prompt_tokens", self.backbone.tokenize(self.prompts), persistent=False)

    def class_prompts(self, classnames: list[str]) -> list[str]:
        """The text of each class's prompt (the template filled with the class name)."""
        return [self.template.format(name) for name in classnames]

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
                                   f"tower's context of {context}; shorten the class name or {self.prompt_source}")

    def backbone_parameters(self) -> dict[str, nn.Parameter]:
        """Backbone tensors the method trains, by their key in the backbone's state dict."""
        return {}

    def added_parameters(self) -> dict[str, nn.Parameter]:
        """Trainable tensors of the modules the method adds, as `method.<name>`."""
        return {ADDED + name: p for name, p in self.named_parameters() if not name.startswith("clip.") and p.requires_grad}

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Every tensor the optimiser updates, by its adapter-file key (see the module doc)."""
        return {**self.backbone_parameters(), **self.added_parameters()}

    def parameter_groups(self) -> dict[str, int]:
        """Trainable parameter counts per group, for `clipfit params` and run summaries."""
        return {}

    @property
    def image_tower_trains(self) -> bool:
        """Whether a training step must back-propagate into the image tower (a tensor of it trains, or the
        method feeds it learned inputs). When not, image features are computed without a graph: the frozen
        tower runs forward only, once per image and step."""
        visual = {id(p) for p in self.clip.visual.parameters()}
        return any(id(p) in visual for p in self.backbone_parameters().values())

    def prepare_training(self) -> None:
        """Compute once, before the first step, whatever the loss compares against."""

    @property
    def feature_views(self) -> int | None:
        """How many augmented views of each training image to encode once and train on (`clipfit.features`),
        for a method that reads images only through the frozen image tower's features (`encode_images`);
        0: the un-augmented images once (the evaluation transform); None (the default): the image tower
        runs on fresh augmentations at every step."""
        return None

    @property
    def trains_on_stored_features(self) -> bool:
        """Whether the optimisation reads the `feature_views` encoded once (else fresh augmentations)."""
        return self.feature_views is not None

    def fit(self, features: torch.Tensor, labels: torch.Tensor,
            val: tuple[torch.Tensor, torch.Tensor] | None) -> dict[str, float]:
        """A training-free method's fit (only called when `fits` is True), under no_grad: ``features``
        [views, N, dim] are `encode_images` of the training images in `feature_views` views, ``labels`` [N];
        ``val`` the validation images' (features [M, dim], labels [M]) under the evaluation transform, or
        None when the split has none. Returns figures for the log."""
        raise NotImplementedError(f"method {self.name!r} sets fits = True but has no fit()")

    def after_training(self, val_features: torch.Tensor, val_labels: torch.Tensor) -> dict[str, float] | None:
        """After the optimisation, under no_grad, for a method with `reads_validation`: select what it
        selects on the validation images' features [M, dim] (Tip-Adapter-F's alpha and beta); figures for
        the log, or None."""
        return None

    @classmethod
    def classifies_unseen(cls, options: dict) -> bool:
        """Whether the method, with these options, builds its classifier from class names alone (so can
        classify classes it never trained on); a method with a linear head (`--type vision`) cannot."""
        return cls.classifies_unseen_classes

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

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm fp32 image features [batch, dim] of preprocessed images [batch, 3, H, W]. Without a
        graph when `image_tower_trains` is False (nothing upstream of the features trains)."""
        images = images.to(self._image_input_dtype(images))
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.image_tower_trains):
            return normalize_fp32(self.clip.encode_image(images))

    def classifier(self) -> torch.Tensor | None:
        """What `logits_from_features` compares images against, computed once per evaluation (the unit-norm
        class text features [classes, dim] by default; None for a method whose classes depend on the image)."""
        return self.class_features()

    def logits_from_features(self, image_features: torch.Tensor, classifier: torch.Tensor | None) -> torch.Tensor:
        """fp32 logits [batch, classes]: logit_scale * cos(image, class), in fp32 whatever the autocast."""
        with fp32(image_features.device):
            return self.backbone.logit_scale.float() * image_features.float() @ classifier.float().t()

    def logits(self, images: torch.Tensor, classifier: torch.Tensor | None) -> torch.Tensor:
        """fp32 logits [batch, classes] of preprocessed images against `classifier()`'s output."""
        return self.logits_from_features(self.encode_images(images), classifier)

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one batch of preprocessed images (a scalar fp32 tensor) and its named parts for the log."""
        return self.feature_loss(self.encode_images(images), labels)

    def feature_loss(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one batch given its image features (`encode_images`' output: what a method with
        `feature_views` trains on); cross-entropy of the logits by default."""
        logits = self.logits_from_features(features, self.classifier())
        with fp32(logits.device):
            loss = F.cross_entropy(logits, labels)
        return loss, {"ce": loss.item()}

    def backward(self, loss: torch.Tensor, scale: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Put this step's gradients into the trainable tensors' `.grad` (the engine zeroed them).
        ``scale`` is the loss scaler's (the identity without one). ProGrad overrides it to combine two
        losses' gradients."""
        scale(loss).backward()

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """What an adapter file holds: the backbone tensors the method trains, and every parameter and
        persistent buffer of the modules it adds (`method.<name>`)."""
        state = {name: p.detach() for name, p in self.backbone_parameters().items()}
        state.update({ADDED + name: t.detach() for name, t in self.state_dict().items() if not name.startswith("clip.")})
        return {name: t.clone().contiguous() for name, t in state.items()}

    def export_state(self) -> tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
        """What `clipfit export` writes (`clipfit.export`): (form, the CLIP's state dict with the method's
        update in its own tensors, the tensors its classifier reads besides the CLIP, metadata values).
        Default: the "open_clip" form, for a method whose whole update lives in the CLIP's tensors and that
        classifies with the class prompts. A method that adds modules and names no other form changes how
        the towers run (learned prompts inside them): `ClipFitError`."""
        if any(key.startswith(ADDED) for key in self.adapter_state()):
            raise ClipFitError(f"method {self.name!r} cannot be exported for plain open_clip: its learned prompts change "
                               "how the towers run; classify with its run folder: clipfit predict --run SEED_FOLDER")
        return "open_clip", self.clip.state_dict(), {}, {}

    def load_adapter_state(self, state: dict[str, torch.Tensor], source: str = "adapter") -> None:
        """Copy an adapter file's tensors in; `ClipFitError` naming the file when a key or shape differs."""
        own = self.backbone_parameters()
        added = {ADDED + name: t for name, t in self.state_dict(keep_vars=True).items() if not name.startswith("clip.")}
        targets = {**own, **added}
        missing = sorted(set(targets) - set(state))
        unexpected = sorted(set(state) - set(targets))
        if missing or unexpected:
            raise ClipFitError(f"{source}: does not match method {self.name!r} on this backbone (missing {missing[:3]}, unexpected {unexpected[:3]})")
        with torch.no_grad():
            for name, t in targets.items():
                if state[name].shape != t.shape:
                    raise ClipFitError(f"{source}: tensor {name} has shape {tuple(state[name].shape)}, the model expects {tuple(t.shape)}")
                t.copy_(state[name].to(t.dtype))


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

    @classmethod
    def classifies_unseen(cls, options: dict) -> bool:
        return options.get("type", cls.config_class().type) == "vision-language"

    @property
    def has_head(self) -> bool:
        return self.config.type == "vision"

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


def require_prepared(method: Method, attribute: str) -> None:
    """`ClipFitError` when the target that `prepare_training` computes is missing."""
    if getattr(method, attribute, None) is None:
        raise ClipFitError(f"{method.name}: prepare_training() must run before the first step")


def feature_distance(features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - mean_i cos(features_i, targets_i) of [classes, dim] features, in fp32 (CLIPFit's and KgCoOp's
    term), computed as mean_i |f^_i - t^_i|^2 / 2 on the unit vectors: equal to 1 - cos in exact
    arithmetic with the same gradient, but a sum of squares, never negative in floating point and
    accurate near 0, where 1 - cos (a difference of two numbers near 1) is rounded to multiples of 2^-24."""
    with fp32(features.device):
        return 0.5 * (normalize_fp32(features) - normalize_fp32(targets)).pow(2).sum(dim=-1).mean()


def train_image_layernorms(method: Method) -> dict[str, nn.Parameter]:
    """Every image-tower LayerNorm's weight and bias, by state-dict key, switched to trainable (CLIPFit's
    Table 4 "+ updating LayerNorm" for other methods); `ClipFitError` for a tower without LayerNorms (a
    ResNet)."""
    from ..backbone import image_layernorms

    norms = select_parameters(method.clip, [(norm, attr) for norm in image_layernorms(method.clip) for attr in ("weight", "bias")])
    if not norms:
        raise ClipFitError(f"method {method.name}: the image tower has no LayerNorm (a ResNet) to train")
    for p in norms.values():
        p.requires_grad_(True)
    return norms


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


def register_variant(base: type[Method], name: str, description: str, **preset) -> type[Method]:
    """Register `base` with some options fixed under a name of its own (CLIPFit's Table 4-6 variants:
    `coop+ln`, `bitfit-text`, ...): a config of one method plus its name, not a new implementation."""
    unknown = sorted(set(preset) - {f.name for f in dataclasses.fields(base.config_class)})
    if unknown:
        raise ValueError(f"variant {name!r}: {base.name} has no option(s) {', '.join(unknown)}")
    variant = type(base.__name__ + "Variant", (base,), {"name": name, "description": description,
                                                        "preset": {**base.preset, **preset}, "__module__": base.__module__})
    return register_method(variant)


def method_config(name: str, options: dict | None = None) -> MethodConfig:
    """The method's config from user options over its preset; `ClipFitError` for an unknown option or
    one that contradicts what the variant fixes."""
    cls = get_method(name)
    options = dict(options or {})
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ClipFitError(f"method {name!r} has no option(s) {', '.join(unknown)} (options: {', '.join(sorted(fields)) or 'none'})")
    for key, value in cls.preset.items():
        if key in options and options[key] != value:
            raise ClipFitError(f"method {name!r} fixes option {key} = {value!r} (got {options[key]!r}); "
                               f"use the base method {cls.__mro__[1].name!r} to change it")
    config = cls.config_class(**{**options, **cls.preset})
    config.check()
    return config


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise ClipFitError(f"unknown method {name!r} (available: {', '.join(sorted(METHODS))})")
    return METHODS[name]


def build_method(name: str, backbone: Backbone, classnames: list[str], template: str, options: dict | None = None) -> Method:
    cls = get_method(name)
    return cls(backbone, classnames, template, method_config(name, options))
