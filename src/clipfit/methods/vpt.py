"""VPT-shallow and VPT-deep: visual prompt tuning on CLIP's image tower, as the PEFT-for-CLIP study applies it.

Jia et al., "Visual Prompt Tuning" (ECCV 2022); on CLIP as the PEFT-for-CLIP study's code runs it,
Andy-LZH/peft4clip@8c00629 (the recipe: `recipes/vpt.yaml`).

N learned prompt tokens are inserted right after the class token, after the positional embedding and
`ln_pre` (they get neither); shallow: one set at the input; deep: each block i >= 1 replaces the N prompt
outputs of the block before with its own set (`clipfit.backbone.encode_image_vpt`). The feature is the
pooled class token through `ln_post` and the projection, unnormalised.

As the study's code runs it (`src/model/CLIP_VPT/VisionPromptCLIP.py`, `Embeddings.py`):
- prompts [N, 768] per prompted block (1 shallow, L deep), uniform in +-sqrt(6 / (3 * patch_h * patch_w +
  768)) (0.0625 on ViT-B/16); a projection Linear(768 -> width), Kaiming-normal (fan_out) weight, PyTorch's
  default bias, applied to the prompts, then dropout 0.1 (per image: the study expands the prompts to the
  batch before the dropout). The study forces the prompt dim to 768 (`PROMPT.PROJECT = 768`, B/16's
  width); ours is the tower's width, so the projection is width x width on every backbone.
- `--type vision`: a Linear(output_dim -> classes) head on the unnormalised feature; VPT's paper
  classifies with a linear head, so that is our default `type`. `--type vision-language`: the study
  multiplies the unnormalised feature by the normalised text features with no logit scale; ours is the
  paper's "cosine against the class prompts": CLIP's logit scale x cosine (`HeadedMethod`).
- The study never optimises the prompt tokens (`build_optimizer` hands SGD the head, the dropout and the
  projection only): a bug against VPT's intent, where the prompts are what trains. Ours trains them by
  default; `train_prompts=False` is the study's code (only the projection and the head train).
- The study trains under fp16 autocast without a loss scaler; ours runs in the run's `--precision`.

Recipe (`src/configs/config.py`, `src/engine/engines.py`, `configs/VPT-CLIP-{Shallow,Deep}/<task>.yaml`): SGD,
momentum 0.9, weight decay 1e-4, batch 32, the base lr held constant for WARMUP_EPOCH (5) + TOTAL_EPOCH
epochs (the study has no scheduler: its "warm-up" epochs run at the same lr), so epochs = 5 + TOTAL_EPOCH,
no warm-up. N, lr and TOTAL_EPOCH per task for the datasets the study shares with CoOp (its VTAB tasks
dtd, flowers, oxford_pet, caltech101, eurosat, sun397), in the recipe; every other dataset gets the
config.py defaults (N 5, lr 0.01, 30 epochs). The study's `food-101.yaml` is not used: its `train.py`
accepts only the VTAB tasks, so that file never runs. The per-dataset values follow the registered name
(`vpt-shallow`'s column, `vpt-deep`'s column): `vpt-shallow` with `deep=True` keeps the shallow column.

Trainable on ViT-B/16 (N = 5, one class, type vision): shallow 3,840 prompts + 590,592 projection + 513
head = 594,945; deep 46,080 + 590,592 + 513 = 637,185. The study's own count (prompts frozen) is the
projection plus the head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..backbone import encode_image_vpt, vision_width
from ..errors import ClipFitError
from .heads import HeadConfig, HeadedMethod
from .registry import register_method, register_variant

# config.py's MODEL.PROMPT.NUM_TOKENS, for a run without a recipe value (num_tokens left None).
DEFAULT_NUM_TOKENS = 5
PROMPT_DROPOUT = 0.1  # VisionPromptCLIP.py: nn.Dropout(0.1) (config.py's PROMPT.DROPOUT is never read)


@dataclass
class VPTConfig(HeadConfig):
    # VPT's paper classifies with a linear head on the image feature.
    type: str = "vision"
    # Prompt tokens per prompted block. None: the study's config.py default, 5 (the runner fills in the
    # study's per-task value from the dataset's recipe, `protocol_defaults`).
    num_tokens: int | None = None
    # Fresh prompts before every block (VPT-deep) instead of at the input only.
    deep: bool = False
    # Train the prompt tokens (VPT's intent). False: the study's code, where only the projection (and the
    # head) train and the prompts keep their random init.
    train_prompts: bool = True
    # Dropout on the projected prompts (VisionPromptCLIP.py).
    dropout: float = PROMPT_DROPOUT

    def check(self):
        super().check()
        n = self.num_tokens
        if n is not None and not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
            raise ClipFitError(f"option num_tokens must be an integer >= 1, got {self.num_tokens!r}")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ClipFitError(f"option dropout must be a number in [0, 1), got {self.dropout!r}")


@register_method
class VPT(HeadedMethod):
    name = "vpt-shallow"
    description = ("VPT-shallow (Jia et al., ECCV 2022) on CLIP as the PEFT-for-CLIP study runs it: "
                   "prompts after the class token")
    config_class = VPTConfig
    # With its default options (type vision, a linear head): base-to-new refuses it; type vision-language
    # classifies new classes (`HeadedMethod.classifies_unseen`).
    classifies_unseen_classes = False

    def add_modules(self):
        if self.config.deep and "deep" not in self.preset:  # the registered name says which VPT ran
            raise ClipFitError("method 'vpt-shallow' with deep=true is VPT-deep: use --method vpt-deep")
        width = vision_width(self.clip)  # BackboneError for a ResNet image tower
        visual = self.clip.visual
        blocks = len(visual.transformer.resblocks) if self.config.deep else 1
        self.num_tokens = self.config.num_tokens or DEFAULT_NUM_TOKENS
        patch_h, patch_w = visual.conv1.kernel_size
        bound = math.sqrt(6.0 / (3 * patch_h * patch_w + width))
        device = visual.class_embedding.device
        prompts = torch.empty(blocks, self.num_tokens, width, device=device).uniform_(-bound, bound)
        self.prompt_embeddings = nn.Parameter(prompts, requires_grad=self.config.train_prompts)
        self.prompt_proj = nn.Linear(width, width, device=device)
        nn.init.kaiming_normal_(self.prompt_proj.weight, a=0, mode="fan_out")
        self.prompt_dropout = nn.Dropout(self.config.dropout)
        self.add_head(visual.output_dim)

    @property
    def image_tower_trains(self):
        return True  # its prompts enter the image tower

    def parameter_groups(self):
        groups = {}
        if self.prompt_embeddings.requires_grad:
            groups["prompts"] = self.prompt_embeddings.numel()
        groups["prompt projection"] = sum(p.numel() for p in self.prompt_proj.parameters())
        if self.has_head:
            groups["linear head"] = sum(p.numel() for p in self.head.parameters())
        return groups

    def visual_prompts(self, batch: int) -> list[torch.Tensor]:
        """The prompts each prompted block receives, [batch, N, width] each: projected, then dropped out per
        image (the study expands the prompts to the batch before its dropout)."""
        projected = self.prompt_proj(self.prompt_embeddings)  # [blocks, N, width]
        per_image = projected.unsqueeze(1).expand(-1, batch, -1, -1)
        return list(self.prompt_dropout(per_image).unbind(0))

    def encode_images(self, images):
        """Unnormalised fp32 image features [batch, dim] (what the head reads; see `HeadedMethod`)."""
        images = images.to(self._image_input_dtype(images))
        return encode_image_vpt(self.clip, images, self.visual_prompts(images.shape[0])).float()


register_variant(VPT, "vpt-deep",
                 "VPT-deep (Jia et al., ECCV 2022) on CLIP as the PEFT-for-CLIP study runs it: "
                 "fresh prompts before every block",
                 deep=True)
