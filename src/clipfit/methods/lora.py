"""CLIP-LoRA: low-rank updates of the attention projections of both towers.

Zanella and Ben Ayed, "Low-Rank Few-Shot Adaptation of Vision-Language Models" (CVPR Workshops 2024), as
its official code runs it (MaxZanella/CLIP-LoRA@358f0d7: `main.py`, `lora.py`, `run_utils.py`,
`loralib/layers.py`, `loralib/utils.py`).

Every chosen projection W (the query, key and value rows of an attention block's packed input projection,
and optionally its output projection) gets a trainable update of rank r:

    y = x W^T + b + scale * (dropout(x) A^T) B^T,    scale = alpha / sqrt(r)

A [r, in] is Kaiming-uniform with a = sqrt(5) and B [out, r] is zero, so training starts from the
pretrained model exactly. The scale is the rank-stabilised alpha / sqrt(r) the official code uses (its
`loralib/layers.py` has the usual alpha / r commented out): 0.707 at the defaults r = 2, alpha = 1. The
dropout touches the LoRA branch's input only (each LoRA projection its own dropout, as the official LoRA
linear), and is off in evaluation.

How it is wired. The frozen CLIP keeps every state-dict key it had (adapter files, the fp16 precision's
weight conversion and `clipfit export` rely on them): the factors are modules of the method
(`self.lora`, saved as `method.lora.<tower>.<block>.<q|k|v|o>.{A,B}`), and each chosen
`nn.MultiheadAttention` has its class switched in place to `LoRAMultiheadAttention`, a subclass with the
same parameters whose forward adds the LoRA terms; it holds an unregistered reference to its factors.
Building the method therefore changes the attention modules of the backbone it is given, in place (as
every method trains "its" backbone in place; a run loads a fresh backbone per seed); building another
CLIP-LoRA on the same backbone re-points them to the new method's factors. `merged_backbone_state()`
gives the backbone's state dict with scale * B A added into the weights (peft's `merge_and_unload`), which
plain open_clip loads as the tuned model.

Classification: logits = logit_scale * cos(image, class prompt) with the backbone's own learned scale,
cross-entropy only. The official code writes a fixed 100, which is OpenAI CLIP's learned value (exp of its
`logit_scale`, 4.6052): identical on OpenAI's weights; on a CLIP trained to another temperature (the mini
CLIP's is 27) a fixed 100 would train it at a temperature it never had, so we keep the CLIP's own. A
merged model loaded into plain open_clip therefore classifies exactly as the tuned one.

Differences from the official code:
- Prompts come from the run's template (the dataset's); the official code trains and tests with
  "a photo of a {}." on every dataset: `--template "a photo of a {}."` gives that.
- The official code trains under fp16 autocast with a GradScaler, the frozen weights fp16 and the wrapped
  attention layers and factors fp32; here the run's `--precision` decides (the factors are always fp32).
- The official few-shot draw (validation images first, by `random.sample`) picks other images than CoOp's
  for the same seed; we use our shared few-shot draw. Its validation set is never used, nor is it here:
  the last iterate is evaluated.
- The official `--position` (which blocks; default all) is not offered: every block of each chosen tower.

A prompt ensemble (`--templates`) is refused: the text tower trains on the single template's prompts and
classifies with them (the official code's "a photo of a {}."); averaging other templates through the tuned
tower would classify with prompts it never trained on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import text_tower
from ..errors import ClipFitError
from .base import Method, MethodConfig
from .registry import register_method

MATRICES = "qkvo"  # query, key, value (rows of the packed input projection), output projection
ENCODERS = ("both", "text", "vision")
TOWERS = ("image", "text")


class LoRAFactors(nn.Module):
    """The low-rank update of one projection [out, in]: A [r, in] Kaiming-uniform (a = sqrt(5)), B [out, r]
    zeros; `forward(x)` is the LoRA branch scale * (dropout(x) A^T) B^T. fp32 whatever the backbone's
    dtype; created on the backbone's device, drawing from torch's global generator."""

    def __init__(self, in_features: int, out_features: int, rank: int, scale: float, dropout: float,
                 device: torch.device):
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features, device=device, dtype=torch.float32))
        self.B = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x.to(self.A.dtype))
        return F.linear(F.linear(x, self.A), self.B) * self.scale

    def delta_weight(self) -> torch.Tensor:
        """scale * B A [out, in], fp32: what merging adds to the frozen weight."""
        return (self.B.detach().float() @ self.A.detach().float()) * self.scale


def _additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A mask as `nn.MultiheadAttention` reads it (bool: True = not attended; float: added to the scores),
    as an additive float mask of ``dtype``."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


class LoRAMultiheadAttention(nn.MultiheadAttention):
    """`nn.MultiheadAttention` (same parameters, same state-dict keys) whose projections carry LoRA terms.

    Never constructed: `attach_lora` switches an existing module's class to this one and sets
    ``lora_factors`` (matrix letter -> `LoRAFactors`, a plain dict, so the factors are not registered in
    the CLIP). With an empty dict it computes exactly what `nn.MultiheadAttention` does. Attention is
    softmax(q k^T / sqrt(head_dim) + mask) v per head through `scaled_dot_product_attention`, then the
    output projection; masks, ``batch_first``, unbatched inputs and the attention weights
    (``need_weights``) follow `nn.MultiheadAttention`. Projections of separate key/value inputs
    (``kdim``/``vdim``), ``bias_k``/``bias_v`` and ``add_zero_attn`` are not supported (refused when attaching).
    """

    lora_factors: dict[str, LoRAFactors]

    def _project(self, x: torch.Tensor, base: torch.Tensor, matrix: str) -> torch.Tensor:
        factors = self.lora_factors.get(matrix)
        return base if factors is None else base + factors(x).to(base.dtype)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        batched = query.dim() == 3
        self_attention = query is key and key is value
        if not batched:  # [L, E]: a batch of one
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        elif not self.batch_first:  # [L, N, E] -> [N, L, E]
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, length, width = query.shape
        source = key.shape[1]
        heads, head_dim = self.num_heads, self.head_dim
        weight, bias = self.in_proj_weight, self.in_proj_bias
        biases = bias.chunk(3) if bias is not None else (None, None, None)
        if self_attention:  # one matmul for the packed projection, as `nn.MultiheadAttention` does
            q, k, v = F.linear(query, weight, bias).chunk(3, dim=-1)
        else:
            q, k, v = (F.linear(x, w, b) for x, w, b in zip((query, key, value), weight.chunk(3), biases))
        q = self._project(query, q, "q")
        k = self._project(key, k, "k")
        v = self._project(value, v, "v")
        q = q.reshape(n, length, heads, head_dim).transpose(1, 2)
        k = k.reshape(n, source, heads, head_dim).transpose(1, 2)
        v = v.reshape(n, source, heads, head_dim).transpose(1, 2)

        if is_causal and attn_mask is None:
            attn_mask = torch.ones(length, source, dtype=torch.bool, device=q.device).triu(1)
        mask = None
        if attn_mask is not None:
            mask = _additive_mask(attn_mask, q.dtype)
            if mask.dim() == 3:  # [N * heads, L, S]
                mask = mask.reshape(n, heads, length, source)
        if key_padding_mask is not None:
            padding = _additive_mask(key_padding_mask, q.dtype).reshape(n, 1, 1, source)
            mask = padding if mask is None else mask + padding
        dropout = self.dropout if self.training else 0.0

        weights = None
        if need_weights:
            scores = (q * head_dim ** -0.5) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores + mask
            weights = F.dropout(scores.softmax(dim=-1), p=dropout)
            out = weights @ v
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if not batched:
                weights = weights.squeeze(0)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        out = out.transpose(1, 2).reshape(n, length, width)
        out = self._project(out, F.linear(out, self.out_proj.weight, self.out_proj.bias), "o")
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


def detach_lora(model: nn.Module) -> None:
    """Turn every `LoRAMultiheadAttention` of ``model`` back into a plain `nn.MultiheadAttention`."""
    for module in model.modules():
        if isinstance(module, LoRAMultiheadAttention):
            del module.lora_factors
            module.__class__ = nn.MultiheadAttention


def attach_lora(attention: nn.MultiheadAttention, factors: dict[str, LoRAFactors]) -> None:
    """Make ``attention`` compute with ``factors`` (in place; its parameters and their names unchanged)."""
    attention.__class__ = LoRAMultiheadAttention
    attention.lora_factors = dict(factors)


def tower_attentions(model: nn.Module, tower: str) -> list[nn.MultiheadAttention]:
    """The attention module of every transformer block of a tower ("image" or "text"), in order; [] for an
    image tower without transformer blocks (a ResNet). `ClipFitError` for a block whose attention is not a
    plain self-attention `nn.MultiheadAttention` (packed input projection)."""
    if tower == "text":
        blocks = text_tower(model).transformer.resblocks
    else:
        transformer = getattr(model.visual, "transformer", None)
        blocks = getattr(transformer, "resblocks", None)
        if blocks is None:
            return []
    attentions = []
    for i, block in enumerate(blocks):
        attention = getattr(block, "attn", None)
        if not (isinstance(attention, nn.MultiheadAttention) and attention._qkv_same_embed_dim
                and attention.bias_k is None and not attention.add_zero_attn):
            raise ClipFitError(f"method clip-lora: block {i} of the {tower} tower has no nn.MultiheadAttention with a "
                               f"packed input projection ({type(attention).__name__}); LoRA cannot wrap it")
        attentions.append(attention)
    return attentions


@dataclass
class CLIPLoRAConfig(MethodConfig):
    """The official `run_utils.py` defaults: rank 2, alpha 1, dropout 0.25, q/k/v, every block, both towers."""

    rank: int = 2
    alpha: float = 1.0
    dropout: float = 0.25
    matrices: str = "qkv"  # any of q, k, v, o (the official `--params`)
    encoder: str = "both"  # one of ENCODERS

    def check(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ClipFitError(f"method clip-lora: option rank must be an integer >= 1, got {self.rank!r}")
        alpha = self.alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (math.isfinite(alpha) and alpha > 0):
            raise ClipFitError(f"method clip-lora: option alpha must be a finite number > 0, got {self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ClipFitError(f"method clip-lora: option dropout must be a number from 0 to below 1, "
                               f"got {self.dropout!r}")
        if (not isinstance(self.matrices, str) or not self.matrices or any(c not in MATRICES for c in self.matrices)
                or len(set(self.matrices)) != len(self.matrices)):
            raise ClipFitError(f"method clip-lora: option matrices must be distinct letters of {MATRICES!r} "
                               f"(q, k, v: input projections; o: output projection), got {self.matrices!r}")
        if self.encoder not in ENCODERS:
            raise ClipFitError(f"method clip-lora: option encoder must be one of {', '.join(ENCODERS)}, "
                               f"got {self.encoder!r}")


@register_method
class CLIPLoRA(Method):
    """CLIP-LoRA (Zanella and Ben Ayed, 2024): see the module docstring for what it computes, where each
    default comes from and how it differs from the official code.

    Optimisation (official `main.py`/`lora.py`): AdamW (weight decay 1e-2) over the factors only, lr 2e-4,
    batch 32, 500 x shots iterations (8,000 for 16 shots, on any dataset; all images: the 16-shot budget),
    a cosine stepped per iteration down to 1e-6, no warm-up. Trainable on ViT-B/16 at the defaults:
    12 x 3 x 2 x (768 + 768) = 110,592 image + 12 x 3 x 2 x (512 + 512) = 73,728 text = 184,320.
    """

    name = "clip-lora"
    description = "CLIP-LoRA (Zanella and Ben Ayed, 2024): rank-2 LoRA on q/k/v of every attention block, both towers"
    config_class = CLIPLoRAConfig
    ensemble_refusal = ("it trains the text tower's attention on the single template (--template) and classifies "
                        "with that template's prompts; an ensemble would classify with prompts it never trained on")

    def add_modules(self):
        config = self.config
        detach_lora(self.clip)  # an earlier CLIP-LoRA built on this backbone lets go of it
        towers = {"both": TOWERS, "text": ("text",), "vision": ("image",)}[config.encoder]
        scale = config.alpha / math.sqrt(config.rank)
        names = {id(m): name for name, m in self.clip.named_modules()}
        self.lora = nn.ModuleDict()
        # Where each block's factors go in the CLIP: (tower, block) -> the attention module's name.
        self.attention_names: dict[tuple[str, int], str] = {}
        for tower in towers:
            attentions = tower_attentions(self.clip, tower)
            if not attentions:
                # A ResNet has no transformer blocks; a timm tower (EVA, ConvNeXt) none of open_clip's.
                kind = "a timm model" if type(self.clip.visual).__name__ == "TimmModel" else "a ResNet"
                what = f"the image tower has no attention blocks of open_clip's ({kind})"
                if config.encoder == "vision":
                    raise ClipFitError(f"method clip-lora: encoder=vision, but {what}")
                self.notes.append(f"{what}: only the text tower gets LoRA")
                continue
            blocks = nn.ModuleList()
            for i, attention in enumerate(attentions):
                width = attention.embed_dim
                device = attention.in_proj_weight.device
                factors = nn.ModuleDict({m: LoRAFactors(width, width, config.rank, scale, config.dropout, device)
                                         for m in MATRICES if m in config.matrices})
                blocks.append(factors)
                attach_lora(attention, dict(factors.items()))
                self.attention_names[(tower, i)] = names[id(attention)]
            self.lora[tower] = blocks

    def parameter_groups(self):
        return {f"lora_{tower}": sum(p.numel() for p in blocks.parameters()) for tower, blocks in self.lora.items()}

    @property
    def image_tower_trains(self):
        return "image" in self.lora

    def export_state(self):
        return "open_clip", self.merged_backbone_state(), {}, {}  # the merged CLIP (peft's merge_and_unload)

    def merged_backbone_state(self) -> dict[str, torch.Tensor]:
        """A copy of the backbone's state dict with scale * B A added into the chosen rows of each
        `attn.in_proj_weight` (q, k, v: rows 0..W-1, W..2W-1, 2W..3W-1) and into `attn.out_proj.weight`
        ("o"), in each tensor's dtype: what plain `open_clip.create_model(arch)` + `load_state_dict` turns
        into the tuned model."""
        state = {key: t.detach().clone() for key, t in self.clip.state_dict().items()}
        for tower, blocks in self.lora.items():
            for i, factors in enumerate(blocks):
                name = self.attention_names[(tower, i)]
                for matrix, f in factors.items():
                    if matrix == "o":
                        key, rows = f"{name}.out_proj.weight", slice(None)
                    else:
                        width = f.B.shape[0]
                        start = MATRICES.index(matrix) * width
                        key, rows = f"{name}.in_proj_weight", slice(start, start + width)
                    weight = state[key]
                    weight[rows] = (weight[rows].float() + f.delta_weight().to(weight.device)).to(weight.dtype)
        return state
