"""Prompt learning: CoOp, CoCoOp, KgCoOp and ProGrad (MaPLe, which also prompts the image tower, is in
`maple.py`).

Every one learns context vectors that replace the word embeddings right after the start-of-text token of
every class prompt, `[SOS][ctx_1..ctx_M][class name][.][EOS]` (the class token at the end, one context
shared by all classes). That context lies in the prefix all prompts share, so the text tower computes it
once per step and each class only its own suffix (`clipfit.text_encoding.PromptContext`): the step's
cost and memory grow with the class names' tokens, not with classes x 77 positions as in the official
code, whose text encoder runs out of memory on ImageNet (KaiyangZhou/CoOp#12).

What each method is, as its official code runs it (`../shared/spec/methods-prompt.md`), is in its class
docstring, with the paper and the code its defaults come from. The image tower stays frozen (no backward
through it) except under the `+ln` variants, which also train its LayerNorms (CLIPFit's Table 4).
Differences from the official code, all deliberate: the trainable tensors are fp32 (the official configs
keep them in fp16 under `PREC fp16`; `--precision fp16-reference` gives fp16 weights but fp32 prompts),
and every loss term is computed in fp32.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import text_tower
from ..errors import ClipFitError
from ..text_encoding import PromptContext, encode_prompts, fp32
from .base import (
    Loss,
    Method,
    MethodConfig,
    feature_distance,
    register_method,
    register_variant,
    require_prepared,
    train_image_layernorms,
)

# CoOp's few-shot schedule by shots (COOP.md, scripts/coop/main.sh: *_ep50, *_ep100, plain = 200 epochs);
# ImageNet trains 50 epochs at every shot count.
COOP_FEWSHOT_EPOCHS = ((1, 50), (4, 100))  # at most 1 shot: 50; at most 4: 100; more: 200
LONG_EPOCHS = 200
IMAGENET_EPOCHS = 50


def template_features(method: Method, template: str) -> torch.Tensor:
    """Unit-norm fp32 features [classes, dim] of a hand-written template filled with each class name
    (underscores read as spaces), from the text tower as it is, without a graph: KgCoOp's hand-crafted
    target and ProGrad's zero-shot teacher."""
    tokens = method.backbone.tokenize([template.format(name.replace("_", " ")) for name in method.classnames])
    with torch.no_grad():
        return encode_prompts(method.clip, tokens)


def template_words(template: str) -> str:
    """A template without its class slot and final period ("a photo of a {}." -> "a photo of a"): the words
    ProGrad initialises its context from."""
    return template.replace(" {}.", "").replace("{}", "").strip()


def coop_fewshot_epochs(dataset: str, shots: int) -> int:
    """CoOp's epochs for a few-shot run: 1 shot 50, 2-4 shots 100, 8-16 (or all) 200; ImageNet 50."""
    if dataset == "imagenet":
        return IMAGENET_EPOCHS
    for most, epochs in COOP_FEWSHOT_EPOCHS:
        if 0 < shots <= most:
            return epochs
    return LONG_EPOCHS


MAX_CONTEXT = 64


def check_context(n_ctx: int | None, ctx_init: str) -> None:
    """`ClipFitError` naming the option when the context would be empty or longer than MAX_CONTEXT vectors."""
    if n_ctx is not None and not (isinstance(n_ctx, int) and not isinstance(n_ctx, bool) and 1 <= n_ctx <= MAX_CONTEXT):
        raise ClipFitError(f"option n_ctx must be an integer from 1 to {MAX_CONTEXT}, got {n_ctx!r}")
    words = len(ctx_init.split())
    if words > MAX_CONTEXT:
        raise ClipFitError(f"option ctx_init has {words} words; the context takes at most {MAX_CONTEXT}")


class PromptLearner(nn.Module):
    """Learned context vectors ``ctx`` [M, width] and the text of the prompts they sit in.

    Initialisation (CoOp `trainers/coop.py`, ProGrad `trainers/prograd.py`, MaPLe `trainers/maple.py`):
    without ``ctx_init``, M = ``n_ctx`` (16 when None) vectors ~ N(0, 0.02^2) and the prompt text
    ``"X X ... X <class>."``; with ``ctx_init`` (a phrase of W words), M = ``n_ctx`` or W when None, the
    prompt text is ``"X" * (M - W) + phrase + " <class>."`` and ``ctx`` holds M - W zero vectors followed by
    the token embeddings of the phrase's first min(M, W) tokens (CoOp: M = W; ProGrad: zeros then its
    template; MaPLe: M = 2 < W, the rest of the phrase stays a fixed part of every prompt). Positions
    ``1 .. M`` of every tokenised prompt are the context; what the placeholder tokens were does not matter.
    """

    def __init__(self, backbone, n_ctx: int | None, ctx_init: str):
        super().__init__()
        tower = text_tower(backbone.model)
        embedding = tower.token_embedding
        width = embedding.weight.shape[1]
        words = ctx_init.split()
        if words:
            n_ctx = n_ctx or len(words)
            tokens = backbone.tokenize([" ".join(words)])[0]
            with torch.no_grad():
                init = embedding(tokens[1 : 1 + min(n_ctx, len(words))]).float()
            pad = max(0, n_ctx - len(words))
            ctx = torch.cat([init.new_zeros(pad, width), init])
            self.prefix_text = " ".join(["X"] * pad + words)
        else:
            n_ctx = n_ctx or 16
            ctx = torch.empty(n_ctx, width, device=embedding.weight.device).normal_(std=0.02)
            self.prefix_text = " ".join(["X"] * n_ctx)
        self.n_ctx = n_ctx
        self.ctx = nn.Parameter(ctx)

    def prompts(self, classnames: list[str]) -> list[str]:
        """The prompt of each class (underscores in names read as spaces, as the official readers do)."""
        return [f"{self.prefix_text} {name.replace('_', ' ')}." for name in classnames]


@dataclass
class CoOpConfig(MethodConfig):
    # None: the number of words of ctx_init (CoOp's rule), 16 without one.
    n_ctx: int | None = None
    # Words whose embeddings initialise the context ("a photo of a"); "" for random N(0, 0.02^2) vectors.
    ctx_init: str = ""
    # Also train the image tower's LayerNorms (CLIPFit Table 4, "+ updating LayerNorm").
    layernorm: bool = False

    def check(self):
        check_context(self.n_ctx, self.ctx_init)


@register_method
class CoOp(Method):
    """CoOp (Zhou et al., IJCV 2022): learned context shared by all classes, class token at the end, CE loss.

    Defaults (KaiyangZhou/CoOp @ff61507, COOP.md and `configs/trainers/CoOp/vit_b16*.yaml`): few-shot 16
    random context vectors, batch 32, lr 0.002, epochs 50 / 100 / 100 / 200 / 200 for 1 / 2 / 4 / 8 / 16
    shots (ImageNet 50); base-to-new as CoCoOp's paper ran CoOp (`vit_b16_ctxv1`): 4 vectors initialised
    from "a photo of a", 200 epochs (ImageNet 50). SGD, 1 warm-up epoch at 1e-5, cosine per epoch.
    """

    name = "coop"
    prompt_source = "the context (n_ctx, ctx_init)"
    description = "CoOp (Zhou et al., IJCV 2022): learned context vectors shared by all classes"
    config_class = CoOpConfig

    def add_modules(self):
        self.prompt_learner = PromptLearner(self.backbone, self.config.n_ctx, self.ctx_init())
        self.image_norms = train_image_layernorms(self) if self.config.layernorm else {}

    @classmethod
    def protocol_defaults(cls, protocol, dataset, shots=16):
        return {"ctx_init": "a photo of a"} if protocol == "base2new" else {}

    @classmethod
    def optim_defaults(cls, protocol, dataset, shots=16):
        if protocol == "few-shot":
            epochs = coop_fewshot_epochs(dataset, shots)
        else:
            epochs = IMAGENET_EPOCHS if dataset == "imagenet" else LONG_EPOCHS
        return {"epochs": epochs, "batch_size": 32, "lr": 0.002}

    def ctx_init(self) -> str:
        return self.config.ctx_init

    def export_state(self):
        # The learned context only shapes the class text features: the run's classes need nothing more.
        return "class_features", self.clip.state_dict(), {"class_features": self.class_features()}, {}

    def class_prompts(self, classnames):
        return self.prompt_learner.prompts(classnames)

    def backbone_parameters(self):
        return dict(self.image_norms)

    def parameter_groups(self):
        groups = {"context vectors": self.prompt_learner.ctx.numel()}
        if self.image_norms:
            groups["image LayerNorms"] = sum(p.numel() for p in self.image_norms.values())
        return groups

    def context(self) -> PromptContext:
        return PromptContext((self.prompt_learner.ctx,))

    def class_features(self):
        return encode_prompts(self.clip, self.prompt_tokens, context=self.context())


register_variant(CoOp, "coop+ln", "CoOp with the image LayerNorms also trained (CLIPFit Table 4, +UL)", layernorm=True)


@dataclass
class KgCoOpConfig(CoOpConfig):
    ctx_init: str = "a photo of a"  # the official code uses these words whatever its config says
    # Weight of 1 - mean_i cos(w_i, w_i_clip) (`TRAINER.COOP.W`; every official script passes 8.0).
    w: float = 8.0

    def check(self):
        super().check()
        if not (isinstance(self.w, (int, float)) and self.w >= 0 and self.w == self.w and self.w != float("inf")):
            raise ClipFitError(f"method kgcoop: w must be a finite number >= 0, got {self.w!r}")


@register_method
class KgCoOp(CoOp):
    """KgCoOp (Yao et al., CVPR 2023): CoOp plus W x (1 - mean_i cos(w_i, w_i_clip)), w_i_clip the class
    features of the hand-crafted prompt (the dataset's template) under the frozen CLIP.

    The paper writes a squared Euclidean distance, twice the code's term for unit vectors; we use the
    code's (htyao89/KgCoOp#6). Defaults (htyao89/KgCoOp @c43ccc3, `vit_b16_ep100_ctxv1.yaml`,
    `scripts/base2new_train.sh`): 4 vectors from "a photo of a", W 8, lr 0.002, 100 epochs; batch 128
    for base-to-new (one step per epoch on small base sets, as the official runs did), 32 for few-shot
    (the author's advice in htyao89/KgCoOp#4).
    """

    name = "kgcoop"
    description = "KgCoOp (Yao et al., CVPR 2023): CoOp + distance to the hand-crafted prompt's class features"
    config_class = KgCoOpConfig

    @classmethod
    def protocol_defaults(cls, protocol, dataset, shots=16):
        return {}

    @classmethod
    def optim_defaults(cls, protocol, dataset, shots=16):
        return {"epochs": 100, "batch_size": 128 if protocol == "base2new" else 32, "lr": 0.002}

    def prepare_training(self):
        """The hand-crafted class features, once per run from the frozen text tower (the official code
        encodes them once when the model is built)."""
        self.handcrafted_features = template_features(self, self.template)

    def training_loss(self, images, labels):
        require_prepared(self, "handcrafted_features")
        class_features = self.class_features()
        logits = self.logits(images, class_features)
        with fp32(logits.device):
            ce = F.cross_entropy(logits, labels)
            kg = feature_distance(class_features, self.handcrafted_features)
        return Loss(ce + self.config.w * kg, {"ce": ce, "kg": kg})


register_variant(KgCoOp, "kgcoop+ln", "KgCoOp with the image LayerNorms also trained (CLIPFit Table 4, +UL)", layernorm=True)


# ProGrad's own templates (BeierZhu/Prompt-align `trainers/prograd.py` CUSTOM_TEMPLATES), by our dataset
# names; every other dataset "a photo of a {}.". They initialise the context and make the teacher's prompts.
PROGRAD_TEMPLATES = {
    "oxford_pets": "a type of pet, a photo of a {}.",
    "oxford_flowers": "a type of flower, a photo of a {}.",
    "fgvc_aircraft": "a type of aircraft, a photo of a {}.",
    "dtd": "a texture of {}.",
    "food101": "a type of food, a photo of {}.",
    "eurosat": "a centered satellite photo of {}.",
    "ucf101": "a photo of a person doing {}.",
}
# The README's lambda 0.8 for 8 and 16 shots on these; 1.0 elsewhere.
PROGRAD_LAMBDA_08 = {"oxford_flowers", "dtd", "eurosat"}


@dataclass
class ProGradConfig(CoOpConfig):
    n_ctx: int | None = 16
    # The teacher's prompt template; None: the run's template (for the official datasets the defaults
    # fill in ProGrad's own, PROGRAD_TEMPLATES). ctx_init defaults to it without " {}.".
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
    """ProGrad (Zhu et al., ICCV 2023): CoOp whose CE gradient, per trainable tensor, loses its component
    against the gradient toward the zero-shot CLIP's prediction when the two conflict.

    Per step: g_ce = grad CE(student, y); g_kd = grad of T^2 x mean_b sum_c -softmax(teacher/T) log_softmax
    (student/T), the teacher the zero-shot CLIP on the same images with ProGrad's template; if g_ce . g_kd
    < 0, g_ce -= lam (g_ce . u) u with u = g_kd / |g_kd|. Only the projected g_ce is applied (the KD loss is
    never added). The teacher shares the student's image features: the frozen image tower runs once.
    Defaults (BeierZhu/Prompt-align @1b76203, RN50 configs, the only ones it ships): 16 vectors, the last
    ones initialised from the dataset's template and the first ones zero; few-shot CoOp's epochs by shots
    (ImageNet 50), base-to-new 100 epochs (ImageNet 50); batch 32, lr 0.002; lam 1.0 (0.8 for 8 and 16
    shots on Flowers102, DTD, EuroSAT, as its README says); T 1.
    """

    name = "prograd"
    description = "ProGrad (Zhu et al., ICCV 2023): CoOp with the CE gradient projected against the zero-shot one"
    config_class = ProGradConfig

    @classmethod
    def protocol_defaults(cls, protocol, dataset, shots=16):
        template = PROGRAD_TEMPLATES.get(dataset)
        defaults = {"lam": 0.8 if dataset in PROGRAD_LAMBDA_08 and shots in (8, 16) else 1.0}
        if template is not None:
            defaults.update(teacher_template=template, ctx_init=template_words(template))
        return defaults

    @classmethod
    def optim_defaults(cls, protocol, dataset, shots=16):
        if protocol == "few-shot":
            epochs = coop_fewshot_epochs(dataset, shots)
        else:
            epochs = IMAGENET_EPOCHS if dataset == "imagenet" else 100
        return {"epochs": epochs, "batch_size": 32, "lr": 0.002}

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


@dataclass
class CoCoOpConfig(MethodConfig):
    n_ctx: int | None = None
    ctx_init: str = "a photo of a"

    def check(self):
        check_context(self.n_ctx, self.ctx_init)


@register_method
class CoCoOp(Method):
    """CoCoOp (Zhou et al., CVPR 2022): the context plus a per-image bias from a meta-network of the image
    feature, so every image gets its own class prompts.

    Meta-network (KaiyangZhou/CoOp `trainers/cocoop.py`): Linear(image dim, image dim / 16), ReLU,
    Linear(-> text width) of the unit image feature; its output is added to every context vector. The text
    tower runs once per image over all classes (the official code does too: CoCoOp's cost); each image's
    context is the shared prefix of its prompts, computed once. Defaults
    (`vit_b16_c4_ep10_batch1_ctxv1.yaml`, every protocol): 4 vectors from "a photo of a", batch 1,
    lr 0.002, 10 epochs. 35,360 trainable parameters on ViT-B/16.
    """

    name = "cocoop"
    prompt_source = "the context (n_ctx, ctx_init)"
    description = "CoCoOp (Zhou et al., CVPR 2022): context conditioned on each image by a meta-network"
    config_class = CoCoOpConfig

    def add_modules(self):
        self.prompt_learner = PromptLearner(self.backbone, self.config.n_ctx, self.config.ctx_init)
        image_dim = self.clip.visual.output_dim
        width = self.prompt_learner.ctx.shape[1]
        self.prompt_learner.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(image_dim, image_dim // 16)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(image_dim // 16, width)),
        ])).to(self.prompt_learner.ctx.device)

    @classmethod
    def optim_defaults(cls, protocol, dataset, shots=16):
        return {"epochs": 10, "batch_size": 1, "lr": 0.002}

    def class_prompts(self, classnames):
        return self.prompt_learner.prompts(classnames)

    def parameter_groups(self):
        meta = sum(p.numel() for p in self.prompt_learner.meta_net.parameters())
        return {"context vectors": self.prompt_learner.ctx.numel(), "meta-network": meta}

    def classifier(self):
        return None  # the class features depend on the image

    def image_class_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """Unit-norm fp32 class features of each image [batch, classes, dim]."""
        bias = self.prompt_learner.meta_net(image_features.to(self.prompt_learner.ctx.dtype))
        contexts = self.prompt_learner.ctx[None] + bias[:, None, :]
        return torch.stack([encode_prompts(self.clip, self.prompt_tokens, context=PromptContext((ctx,))) for ctx in contexts])

    def logits_from_features(self, image_features, classifier=None):
        class_features = self.image_class_features(image_features)
        with fp32(image_features.device):
            cos = torch.einsum("bd,bcd->bc", image_features.float(), class_features.float())
            return self.backbone.logit_scale.float() * cos

    def class_features(self):
        """The classes' features with no image bias (the context alone), for inspection."""
        return encode_prompts(self.clip, self.prompt_tokens, context=PromptContext((self.prompt_learner.ctx,)))

