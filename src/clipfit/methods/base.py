"""The contract every method fulfils (`Method`, its `MethodConfig`, the `Regime` the engine trains it in,
the `Loss` it returns) and the numerics several methods share.

A method says what is trainable (tensors of the backbone it selects by structure, and modules it adds),
how it classifies (`classifier`, `logits_from_features`), what its loss adds (`training_loss`) and how a
step's gradients are combined (`backward`); its paper's optimisation defaults per protocol, dataset and
shots are data, the method's recipe file (`clipfit.recipes`, read by `optim_defaults` and
`protocol_defaults`). The training and evaluation loop lives in `clipfit.engine` and is shared by all;
the registry that names the methods is `clipfit.methods.registry`.

Adapter files hold a method's state under two kinds of names that cannot collide: a backbone tensor the
method trains keeps its key in the backbone's state dict (`transformer.resblocks.0.mlp.c_proj.bias`), a
tensor of a module the method adds is named `method.<its name in the method>` (`method.prompt_learner.ctx`);
no open_clip state-dict key starts with `method.`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..adapter import AdapterInfo, read_adapter, save_adapter
from ..backbone import Backbone, load_backbone, weights_fingerprint
from ..config import check_device, check_template
from ..errors import ClipFitError
from ..precision import apply_precision
from ..recipes import recipe_defaults, recipe_files
from ..text_encoding import fp32, normalize_fp32

# Prefix of the adapter-file keys of tensors a method adds (see the module doc).
ADDED = "method."
# The adapter file's name in a run's seed folder.
ADAPTER_FILE = "adapter.safetensors"

OPTIMISE_INPUTS = ("images", "features")


@dataclass(frozen=True)
class Regime:
    """How the engine trains a method, the one description of it that the engine, the runner and the CLI read.

    ``fit``: a one-pass fit (`Method.fit`, no gradients) on stored features of the training images (a
    feature cache, a closed-form probe), which also receives the validation split's features to select on.
    ``optimise``: the optimisation loop after it, None for none, "images" for fresh augmentations through
    the image tower at every step, "features" for the stored features (`Method.feature_loss`).
    ``views``: how many augmented views of each training image are encoded once and stored (0: the
    un-augmented images once, under the evaluation transform); None when nothing is stored.
    A method that fits and then optimises (Tip-Adapter-F) gets `Method.after_training` with the validation
    features once the optimisation ends.
    """

    fit: bool = False
    optimise: str | None = "images"
    views: int | None = None

    def __post_init__(self):
        if self.optimise not in (None, *OPTIMISE_INPUTS):
            raise ValueError(f"Regime.optimise must be None or one of {OPTIMISE_INPUTS}, got {self.optimise!r}")
        if (self.fit or self.optimise == "features") != (self.views is not None):
            raise ValueError(f"{self}: a regime that fits or optimises on stored features names its views, others none")

    @property
    def trains(self) -> bool:
        """Whether anything is fitted or optimised (zero-shot: neither; it draws no few-shot set either)."""
        return self.fit or self.optimise is not None

    def __str__(self) -> str:
        steps = (["fit"] if self.fit else []) + ([f"optimise on {self.optimise}"] if self.optimise else [])
        return ", then ".join(steps) or "no training"


NO_TRAINING = Regime(optimise=None)


@dataclass
class Loss:
    """One batch's loss as the engine receives it: ``total`` the scalar fp32 tensor whose gradient trains
    (unless `Method.backward` combines the terms otherwise, as ProGrad does), ``terms`` its named parts as
    tensors (the log's columns; a term may keep its graph for `backward`). No host sync: the engine
    fetches the logged values once per epoch."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    def term_values(self) -> dict[str, float]:
        """The terms as Python numbers (a host sync per term: for a log line or a test, not inside a step)."""
        return {name: float(value.detach()) for name, value in self.terms.items()}


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
    # What besides the class name makes up a prompt, for the over-long-prompt message.
    prompt_source: ClassVar[str] = "the template"
    # Whether the classifier is built from class names alone, so that it can classify classes it never
    # trained on (base-to-new's "new" half). A linear head cannot: base-to-new refuses it up front.
    classifies_unseen_classes: ClassVar[bool] = True
    # The `clipfit train` shortcut flags this method accepts, each setting the method option of its name:
    # "beta" (CLIPFit's regulariser weight), "type" (the PEFT-for-CLIP study's classifier, `HeadConfig`). An
    # option of the same name not listed here is another quantity (Tip-Adapter's beta): `--option` only.
    cli_shortcuts: ClassVar[tuple[str, ...]] = ()
    # What a prompt ensemble (`--templates`, `set_templates`) replaces in this method (`templates_role`, which
    # options may change): "classifier", its classifier is the frozen text tower's features of a hand-written
    # template, averaged over the ensemble instead (zero-shot, the adapters; declared only where nothing of
    # the text tower trains); "target", its classifier is learned or trained from the single template, and
    # the ensemble replaces that template in the frozen features it is pulled toward (CLIPFit's and KgCoOp's
    # targets, ProGrad's teacher); None, refused, `ensemble_refusal` saying why in one line.
    ensemble_role: ClassVar[str | None] = None
    ensemble_refusal: ClassVar[str] = "it does not say what a prompt ensemble would replace in it"

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
        # The prompt ensemble (`set_templates`): its templates, their role here, the features of a "classifier".
        self.templates: list[str] | None = None
        self._ensemble_role: str | None = None
        self._ensemble_cache: tuple | None = None
        self.add_modules()
        self.set_classes(classnames)

    def add_modules(self) -> None:
        """Create the modules the method adds and select the backbone tensors it trains (before the class
        list is set). Random initialisations draw from torch's global generator: the runner seeds it."""

    @classmethod
    def training_regime(cls, config: MethodConfig) -> Regime:
        """How the engine trains this method with these options (default: optimise on fresh images)."""
        return Regime()

    @property
    def regime(self) -> Regime:
        return self.training_regime(self.config)

    @classmethod
    def protocol_defaults(cls, protocol: str, dataset: str, shots: int = 16) -> dict:
        """Method options that depend on the protocol, the dataset's registry name or the shots (filled in
        where the user gave none): the ``options`` of the method's recipe file (`clipfit.recipes`); {} for a
        method no recipe file names (a plugin's, a test's). Method-specific values live there, never in the
        dataset's spec."""
        return cls._recipe(protocol, dataset, shots)[1]

    @classmethod
    def optim_defaults(cls, protocol: str, dataset: str, shots: int = 16) -> dict:
        """`OptimConfig` fields (epochs, batch_size, lr) as the method's paper and official code set them
        for the protocol, dataset and shots: the ``optim`` of its recipe file (filled in where the user gave
        none; the rest fall back to `OptimConfig`'s own defaults); {} for a method no recipe file names."""
        return cls._recipe(protocol, dataset, shots)[0]

    @classmethod
    def _recipe(cls, protocol: str, dataset: str, shots: int) -> tuple[dict, dict]:
        if cls.name not in recipe_files():
            return {}, {}
        return recipe_defaults(cls.name, protocol, dataset, shots)

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
            hint = "; use type=vision-language to classify other classes" if head else ""
            raise ClipFitError(f"method {self.name!r}{head} classifies only the {len(self.classnames)} classes it was "
                               "trained on (its classifier holds them)" + hint)
        check_template(self.template)
        self.classnames = list(classnames)
        self.prompts = self.class_prompts(self.classnames)
        self._check_prompt_lengths()
        self.register_buffer("prompt_tokens", self.backbone.tokenize(self.prompts), persistent=False)

    def class_prompts(self, classnames: list[str]) -> list[str]:
        """The text of each class's prompt (the template filled with the class name)."""
        return [self.template.format(name) for name in classnames]

    def hand_written_prompts(self, template: str) -> list[str]:
        """A hand-written ``template`` filled with each current class name: the prompts of a prompt
        ensemble's template, and of a frozen target's (the prompt learners read underscores as spaces)."""
        return [template.format(name) for name in self.classnames]

    def _check_prompt_lengths(self) -> None:
        """The tokenizer would silently cut a prompt longer than the text tower's context, dropping its
        end (the class name, often) and making prompts identical: refuse it, naming the class (and the
        ensemble's template that makes it too long)."""
        tokenizer = self.backbone.tokenizer
        context, encode = getattr(tokenizer, "context_length", None), getattr(tokenizer, "encode", None)
        if context is None or encode is None:  # a Hugging Face tokenizer: no token count to check
            return
        checks = [(self.prompts, self.prompt_source)]
        checks += [(self.hand_written_prompts(t), f"template {t!r} of --templates") for t in self.templates or ()]
        for prompts, source in checks:
            for name, prompt in zip(self.classnames, prompts):
                length = len(encode(prompt)) + 2  # start- and end-of-text tokens
                if length > context:
                    raise ClipFitError(f"class {name!r}: prompt {prompt!r} is {length} tokens, longer than the text "
                                       f"tower's context of {context}; shorten the class name or {source}")

    @classmethod
    def templates_role(cls, options: dict) -> str | None:
        """What a prompt ensemble replaces in this method with these options (see `ensemble_role`):
        "classifier", "target", or None when it is refused."""
        return cls.ensemble_role

    @classmethod
    def templates_refusal(cls, options: dict) -> str:
        """Why this method, with these options, refuses a prompt ensemble (one line)."""
        return cls.ensemble_refusal

    @classmethod
    def check_templates_role(cls, options: dict) -> str:
        """`templates_role` with these options; `ClipFitError` in one line saying why when it is refused."""
        role = cls.templates_role(options)
        if role is None:
            raise ClipFitError(f"--templates does not apply to method {cls.name!r}: {cls.templates_refusal(options)}")
        return role

    def set_templates(self, templates: list[str] | None) -> None:
        """Use a prompt ensemble from now on: ``templates`` (each checked as `check_template` does) filled
        with every class name, their features averaged as CLIP does (`ensemble_features`), for what
        `templates_role` says they replace; None: the single template again. `ClipFitError` when the method
        refuses an ensemble, a template is bad, or a prompt would be longer than the text tower's context."""
        if templates is None:
            role = None
        else:
            role = self.check_templates_role(dataclasses.asdict(self.config))
            templates = list(templates)
            if not templates:
                raise ClipFitError("--templates: a prompt ensemble needs at least one template")
            for template in templates:
                check_template(template)
        self.templates, self._ensemble_role, self._ensemble_cache = templates, role, None
        self.set_classes(self.classnames)  # checks the ensemble's prompts

    def backbone_parameters(self) -> dict[str, nn.Parameter]:
        """Backbone tensors the method trains, by their key in the backbone's state dict."""
        return {}

    def added_parameters(self) -> dict[str, nn.Parameter]:
        """Trainable tensors of the modules the method adds, as `method.<name>`."""
        return {ADDED + name: p for name, p in self.named_parameters()
                if not name.startswith("clip.") and p.requires_grad}

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Every tensor the optimiser updates, by its adapter-file key (see the module doc)."""
        return {**self.backbone_parameters(), **self.added_parameters()}

    def parameter_groups(self) -> dict[str, int]:
        """Trainable parameter counts per group, for `clipfit params` and run summaries. Derived from
        `trainable_parameters` unless a method names its own groups: a backbone tensor counts towards
        "text" or "image" (its tower), an added one towards its module's name (`prompt_learner`)."""
        groups: dict[str, int] = {}
        visual = {id(p) for p in self.clip.visual.parameters()}
        for key, p in self.trainable_parameters().items():
            group = key[len(ADDED):].split(".")[0] if key.startswith(ADDED) else "image" if id(p) in visual else "text"
            groups[group] = groups.get(group, 0) + p.numel()
        return groups

    @property
    def image_tower_trains(self) -> bool:
        """Whether a training step must back-propagate into the image tower (a tensor of it trains, or the
        method feeds it learned inputs). When not, image features are computed without a graph: the frozen
        tower runs forward only, once per image and step."""
        visual = {id(p) for p in self.clip.visual.parameters()}
        return any(id(p) in visual for p in self.backbone_parameters().values())

    def prepare_training(self) -> None:
        """Compute once, before the first step, whatever the loss compares against."""

    def fit(self, features: torch.Tensor, labels: torch.Tensor,
            val: tuple[torch.Tensor, torch.Tensor] | None) -> dict[str, float]:
        """The one-pass fit of a method whose `regime` fits, under no_grad: ``features`` [views, N, dim] are
        `encode_images` of the training images in the regime's views, ``labels`` [N]; ``val`` the validation
        images' (features [M, dim], labels [M]) under the evaluation transform, or None when the split has
        none. Returns figures for the log (numbers)."""
        raise NotImplementedError(f"method {self.name!r}: its regime fits, but it has no fit()")

    def after_training(self, val_features: torch.Tensor, val_labels: torch.Tensor) -> dict[str, float] | None:
        """After the optimisation of a method that fits and then optimises, under no_grad: select what it
        selects on the validation images' features [M, dim] (Tip-Adapter-F's alpha and beta); figures for
        the log, or None."""
        return None

    @classmethod
    def searches_on_validation(cls, options: dict) -> bool:
        """Whether the method, with these options, selects a hyperparameter on the validation split (the
        linear probe's C, Tip-Adapter's alpha and beta), so that a protocol with a split kept for that
        search (VTAB-1k's train800 / val200) gives it that split."""
        return False

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
        """Unit-norm fp32 text features of the class prompts [classes, dim]; with a prompt ensemble in the
        "classifier" role, the ensemble's (`ensemble_features`), computed once per class list, templates,
        weight dtype and device (the text tower of such a method never trains)."""
        if self._ensemble_role == "classifier":
            weight = next(self.clip.parameters())
            key = (tuple(self.classnames), tuple(self.templates), weight.dtype, weight.device)
            if self._ensemble_cache is None or self._ensemble_cache[0] != key:
                self._ensemble_cache = (key, self.ensemble_features())
            return self._ensemble_cache[1]
        return self.backbone.encode_text(self.prompt_tokens)

    def ensemble_features(self, templates: list[str] | None = None) -> torch.Tensor:
        """CLIP's prompt ensemble of the current classes, unit-norm fp32 [classes, dim]: each of ``templates``
        (default: the method's own, `templates`) filled with every class name (`hand_written_prompts`),
        encoded by the text tower as it is now, without a graph, one template at a time, and averaged
        (`average_over_templates`)."""
        templates = self.templates if templates is None else templates
        if not templates:
            raise ClipFitError(f"method {self.name!r}: no templates to average")
        with torch.no_grad():
            return average_over_templates(
                [self.backbone.encode_text(self.backbone.tokenize(self.hand_written_prompts(t))) for t in templates])

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

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor) -> Loss:
        """The `Loss` of one batch of preprocessed images [batch, 3, H, W] with labels [batch]."""
        return self.feature_loss(self.encode_images(images), labels)

    def feature_loss(self, features: torch.Tensor, labels: torch.Tensor) -> Loss:
        """The `Loss` of one batch given its image features (`encode_images`' output [batch, dim]: what a
        regime that optimises on stored features reads); cross-entropy of the logits by default."""
        logits = self.logits_from_features(features, self.classifier())
        with fp32(logits.device):
            loss = F.cross_entropy(logits, labels)
        return Loss(loss, {"ce": loss})

    def backward(self, loss: Loss, scale: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Put this step's gradients into the trainable tensors' `.grad` (the engine zeroed them).
        ``scale`` is the loss scaler's (the identity without one). ProGrad overrides it to combine the
        gradients of two of its terms."""
        scale(loss.total).backward()

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """What an adapter file holds: the backbone tensors the method trains, and every parameter and
        persistent buffer of the modules it adds (`method.<name>`)."""
        state = {name: p.detach() for name, p in self.backbone_parameters().items()}
        state.update({ADDED + name: t.detach() for name, t in self.state_dict().items()
                      if not name.startswith("clip.")})
        return {name: t.clone().contiguous() for name, t in state.items()}

    def export_state(self) -> tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
        """What `clipfit export` writes (`clipfit.export`): (form, the CLIP's state dict with the method's
        update in its own tensors, the tensors its classifier reads besides the CLIP, metadata values).
        Default: the "open_clip" form, for a method whose whole update lives in the CLIP's tensors and that
        classifies with the class prompts. A method that adds modules and names no other form changes how
        the towers run (learned prompts inside them): `ClipFitError`."""
        if any(key.startswith(ADDED) for key in self.adapter_state()):
            raise ClipFitError(f"method {self.name!r} cannot be exported for plain open_clip: its learned prompts "
                               "change how the towers run; classify with its run folder: "
                               "clipfit predict --run SEED_FOLDER")
        # A prompt ensemble classifies with the averaged features, which the class prompts alone do not give.
        extra = {"class_features": self.class_features()} if self._ensemble_role == "classifier" else {}
        return "open_clip", self.clip.state_dict(), extra, {}

    def save_pretrained(self, path: str | Path, *, precision: str = "fp32", options: dict | None = None) -> Path:
        """Write this method's adapter file (peft's name): `adapter_state` with the metadata that rebuilds it
        from its base weights alone (architecture, pretrained tag and fingerprint, method and ``options``,
        by default every field of its config; the training classes; template; the prompt ensemble's
        templates, if any; the ``precision`` it was trained in). ``path``: a file, or a folder to hold
        `adapter.safetensors`. Written atomically; returns the file's path. `from_pretrained` reads it back."""
        path = Path(path)
        if path.is_dir():
            path = path / ADAPTER_FILE
        info = AdapterInfo(
            model=self.backbone.model_name, pretrained=self.backbone.pretrained, method=self.name,
            method_options=dataclasses.asdict(self.config) if options is None else options,
            classnames=self.classnames, template=self.template, templates=self.templates,
            weights=weights_fingerprint(self.backbone.model_name, self.backbone.pretrained), precision=precision,
        )
        save_adapter(path, self.adapter_state(), info)
        return path

    @staticmethod
    def from_pretrained(path: str | Path, *, device: str = "auto", backbone: Backbone | None = None,
                        precision: str | None = None) -> Method:
        """The tuned model an adapter file describes, from the file and its base weights alone (peft's name):
        the backbone its metadata names (or ``backbone``, the same base model already loaded: it is changed
        in place) with the method built on it and the file's tensors in, in eval mode and the precision it
        was trained in (``precision`` for a file that records none). ``path``: the file, or a run's seed
        folder. `ClipFitError` naming the file when it is unreadable, corrupted, trained on other weights,
        or does not match its method."""
        path = Path(path)
        if path.is_dir():  # a run's seed folder holds its adapter file
            path = path / ADAPTER_FILE
        tensors, info = read_adapter(path)
        current = weights_fingerprint(info.model, info.pretrained)
        if info.weights and info.weights != current:
            raise ClipFitError(f"{path}: trained on {info.model} {info.pretrained} "
                               f"with weights {info.weights}, which now are {current}; retrain it on these weights")
        if backbone is None:
            backbone = load_backbone(info.model, info.pretrained, device=check_device(device))
        elif (backbone.model_name, backbone.pretrained) != (info.model, info.pretrained):
            raise ClipFitError(f"{path}: trained on {info.model} {info.pretrained}, not on the given "
                               f"{backbone.model_name} {backbone.pretrained}")
        from .registry import build_method  # the registry imports this module

        method = build_method(info.method, backbone, info.classnames, info.template, info.method_options,
                              templates=info.templates)
        apply_precision(method, precision or info.precision)  # the weight layout it was trained and measured in
        method.load_adapter_state(tensors, source=str(path))
        method.eval()
        return method

    def load_adapter_state(self, state: dict[str, torch.Tensor], source: str = "adapter") -> None:
        """Copy an adapter file's tensors in; `ClipFitError` naming the file when a key or shape differs."""
        own = self.backbone_parameters()
        added = {ADDED + name: t for name, t in self.state_dict(keep_vars=True).items() if not name.startswith("clip.")}
        targets = {**own, **added}
        missing = sorted(set(targets) - set(state))
        unexpected = sorted(set(state) - set(targets))
        if missing or unexpected:
            raise ClipFitError(f"{source}: does not match method {self.name!r} on this backbone "
                               f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        with torch.no_grad():
            for name, t in targets.items():
                if state[name].shape != t.shape:
                    raise ClipFitError(f"{source}: tensor {name} has shape {tuple(state[name].shape)}, "
                                       f"the model expects {tuple(t.shape)}")
                t.copy_(state[name].to(t.dtype))


def require_prepared(method: Method, attribute: str) -> None:
    """`ClipFitError` when the target that `prepare_training` computes is missing."""
    if getattr(method, attribute, None) is None:
        raise ClipFitError(f"{method.name}: prepare_training() must run before the first step")


def average_over_templates(features: list[torch.Tensor]) -> torch.Tensor:
    """CLIP's prompt ensemble: unit-norm features [classes, dim] of each template's prompts, averaged over
    the templates and L2-normalised again, in fp32 (Radford et al., ICML 2021, Sec. 3.1.4; openai/CLIP
    @d05afc4 `notebooks/Prompt_Engineering_for_ImageNet.ipynb`, `zeroshot_classifier`). One template: its
    features as they are, bit for bit (renormalising a unit vector could move its last bit). `ValueError`
    for no features."""
    if not features:
        raise ValueError("average_over_templates: no templates' features")
    if len(features) == 1:
        return features[0]
    with fp32(features[0].device):
        return normalize_fp32(torch.stack([f.float() for f in features]).mean(dim=0))


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

    pairs = [(norm, attr) for norm in image_layernorms(method.clip) for attr in ("weight", "bias")]
    norms = select_parameters(method.clip, pairs)
    if not norms:
        raise ClipFitError(f"method {method.name}: the image tower has no LayerNorm (a ResNet) to train")
    for p in norms.values():
        p.requires_grad_(True)
    return norms


def select_parameters(model: nn.Module, modules_and_attrs: list[tuple[nn.Module, str]]) -> dict[str, nn.Parameter]:
    """Name the chosen (module, attribute) parameters by their key in `model`'s state dict."""
    wanted = {id(getattr(module, attr)) for module, attr in modules_and_attrs if getattr(module, attr) is not None}
    return {name: p for name, p in model.named_parameters() if id(p) in wanted}


# Names this module held before the registry and the heads got modules of their own.
_MOVED = {"METHODS": "registry", "register_method": "registry", "register_variant": "registry",
          "method_config": "registry", "get_method": "registry", "build_method": "registry",
          "method_regime": "registry", "HEAD_TYPES": "heads", "HeadConfig": "heads", "HeadedMethod": "heads"}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"{__package__}.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
