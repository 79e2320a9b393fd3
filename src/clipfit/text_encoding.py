"""Exact, fast text features for a batch of class prompts.

`encode_prompts(model, tokens)` returns the same normalised features as open_clip's
`F.normalize(model.encode_text(tokens))` over the full 77-token context, to float tolerance, with
gradients to every trainable text parameter, while computing far fewer token positions:

1. Nothing after a prompt's end-of-text (EOT) token is computed. The text tower is causal and pools at
   the EOT token (the highest token id, `argmax` pooling), so later positions cannot reach the feature.
2. The token prefix shared by every prompt ("<sot> a photo of a") is computed once, as a batch of one.
   Under the causal mask a position only sees positions before it, so every prefix position has the same
   hidden states in every prompt. Each prompt then runs only its own suffix positions, whose queries
   attend over [shared prefix keys/values, own suffix keys/values (causal)].
3. The suffix positions are packed: prompts are ordered by suffix length, and the position-wise layers
   (LayerNorms, projections, MLPs) run on the packed tokens with no padding. Attention runs once per
   group of equally long suffixes, on a view of the packed tokens (on a CPU), or once over the suffixes
   padded to the longest (on a GPU, where kernel launches cost more than the padding). The shared prefix
   keys/values are broadcast to every prompt, never copied per prompt.
4. In the last block only the EOT positions need a query, an attention output and an MLP; the other
   positions only supply keys and values.

The prefix depends on the trainable parameters too (CLIPFit's text MLP biases), and gradients reach them
through both the prefix and the suffix paths.

The block forward is re-implemented from the modules' weights, so the fast path takes only towers whose
structure it knows: open_clip's `ResidualAttentionBlock` (pre-norm, `nn.MultiheadAttention`, optional
LayerScale), a causal mask, argmax pooling and no class token. A text tower with custom attention blocks
gets (1) only; anything else (CoCa's class token, EOS or first-token pooling, a bidirectional mask, Hugging
Face text towers) gets open_clip's own `encode_text`.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from open_clip.transformer import LayerScale, ResidualAttentionBlock
from torch import nn


@dataclass(frozen=True)
class PromptLayout:
    """Where each prompt's tokens go: the shared prefix, and the packed suffixes grouped by length.

    Prompts are ordered by decreasing suffix length; `groups` holds (suffix length, number of prompts,
    first packed row) per run of equal lengths; `restore[i]` is the ordered index of input prompt `i`.
    """

    length: int  # positions up to and including the last EOT of the batch
    prefix: int  # positions shared by every prompt (at most the shortest prompt's EOT position)
    prefix_tokens: torch.Tensor  # [prefix]
    suffix_tokens: torch.Tensor  # [rows]: every prompt's tokens from `prefix` to its EOT, in order
    suffix_positions: torch.Tensor  # [rows]
    eot_rows: torch.Tensor  # [prompts]: packed row of each ordered prompt's EOT
    restore: torch.Tensor  # [prompts]
    groups: tuple[tuple[int, int, int], ...]
    padded_rows: torch.Tensor  # [prompts, longest suffix]: packed row of each suffix position (padding: the EOT row)
    unpadded: torch.Tensor  # [rows]: each packed row's flat index in the padded layout
    padding: torch.Tensor  # [prompts, 1, 1, longest suffix]: True at padding positions
    masks: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict, compare=False)

    @property
    def rows(self) -> int:
        return int(self.suffix_tokens.shape[0])

    def hidden(self, queries: int, keys: int) -> torch.Tensor:
        """Boolean [queries, keys], True where the causal mask hides a key from a query; the queries are
        the last `queries` of the `keys` positions."""
        mask = self.masks.get((queries, keys))
        if mask is None:
            device = self.suffix_tokens.device
            query = torch.arange(keys - queries, keys, device=device)[:, None]
            mask = torch.arange(keys, device=device)[None, :] > query
            self.masks[(queries, keys)] = mask
        return mask


@dataclass(frozen=True)
class PromptContext:
    """Learned vectors that replace positions ``start .. start + M - 1`` of every prompt (M = ``vectors[0]``'s
    first dimension; open_clip's text width D).

    ``vectors[0]`` [M, D] replaces the token embeddings there (before the positional embedding is added:
    CoOp's context, `prompt_learner.ctx`); ``vectors[i]`` for i >= 1, when given, replaces the hidden states
    at those positions as they enter block i (MaPLe's deep text prompts, `compound_prompts_text`); a block
    whose entry is None (or past the list) carries the positions on. The positions must lie in the prefix
    that every prompt shares, which the placeholder tokens of a prompt learner's template guarantee.
    """

    vectors: tuple[torch.Tensor | None, ...]
    start: int = 1  # right after the start-of-text token

    @property
    def length(self) -> int:
        return int(self.vectors[0].shape[0])

    def check(self, prefix: int) -> None:
        if self.start + self.length > prefix:
            raise ValueError(f"learned context at positions {self.start}..{self.start + self.length - 1} is not "
                             f"inside the prefix shared by every prompt ({prefix} positions)")

    def at(self, block: int) -> torch.Tensor | None:
        return self.vectors[block] if block < len(self.vectors) else None

    def splice(self, x: torch.Tensor, block: int) -> torch.Tensor:
        """``x`` [..., positions, D] with the context positions replaced by block ``block``'s vectors."""
        vectors = self.at(block)
        if vectors is None:
            return x
        end = self.start + self.length
        vectors = vectors.to(x.dtype).expand(*x.shape[:-2], *vectors.shape)
        return torch.cat([x[..., : self.start, :], vectors, x[..., end:, :]], dim=-2)


def prompt_layout(tokens: torch.Tensor) -> PromptLayout:
    """Analyse a [prompts, context] token tensor (argmax pooling: the EOT token has the highest id)."""
    # Plain tensors even when called under inference mode: the layout's indices are saved for backward
    # when it is reused in a training step.
    with torch.inference_mode(False), torch.no_grad():
        return _prompt_layout(tokens)


def _prompt_layout(tokens: torch.Tensor) -> PromptLayout:
    prompts = tokens.shape[0]
    eot = tokens.argmax(dim=-1)
    eot_list = eot.tolist()
    length = max(eot_list) + 1
    head = tokens[:, :length]
    differs = (head != head[:1]).any(dim=0).nonzero().flatten().tolist()
    common = differs[0] if differs else length
    # Every prompt keeps at least its EOT position in its suffix, where its feature is pooled.
    prefix = min(common, min(eot_list))
    suffix_lengths = [e - prefix + 1 for e in eot_list]
    order = sorted(range(prompts), key=lambda i: -suffix_lengths[i])
    restore = [0] * prompts
    for rank, i in enumerate(order):
        restore[i] = rank
    groups, eot_rows, start = [], [], 0
    for i in order:
        s = suffix_lengths[i]
        if groups and groups[-1][0] == s:
            groups[-1][1] += 1
        else:
            groups.append([s, 1, start])
        start += s
        eot_rows.append(start - 1)
    device = tokens.device
    order_t = torch.tensor(order, device=device)
    positions = torch.arange(length, device=device)
    keep = (positions[None, :] >= prefix) & (positions[None, :] <= eot[:, None])
    keep = keep[order_t]
    longest = groups[0][0]
    lengths_t = torch.tensor([suffix_lengths[i] for i in order], device=device)
    eot_rows_t = torch.tensor(eot_rows, device=device)
    offsets = torch.arange(longest, device=device)
    padding = offsets[None, :] >= lengths_t[:, None]
    padded_rows = torch.where(padding, eot_rows_t[:, None], (eot_rows_t - lengths_t + 1)[:, None] + offsets[None, :])
    return PromptLayout(
        length=length,
        prefix=prefix,
        prefix_tokens=tokens[0, :prefix].clone(),
        suffix_tokens=head[order_t][keep],
        suffix_positions=positions.expand(prompts, length)[keep],
        eot_rows=eot_rows_t,
        restore=torch.tensor(restore, device=device),
        groups=tuple(tuple(g) for g in groups),
        padded_rows=padded_rows,
        unpadded=(~padding).flatten().nonzero().flatten(),
        padding=padding[:, None, None, :],
    )


# The class prompts of a method are one buffer encoded at every step: analyse them once. Keyed by the
# tensor object itself (a weak reference) and its in-place version counter, so a changed or new token
# tensor is analysed afresh.
_LAYOUTS: dict[int, tuple[weakref.ref, int, PromptLayout]] = {}
_LAYOUT_CACHE_SIZE = 8


def cached_prompt_layout(tokens: torch.Tensor) -> PromptLayout:
    """`prompt_layout(tokens)`, analysed once per token tensor (and again after an in-place change)."""
    if tokens.is_inference():  # inference tensors keep no version counter
        return prompt_layout(tokens)
    entry = _LAYOUTS.get(id(tokens))
    if entry is not None and entry[0]() is tokens and entry[1] == tokens._version:
        return entry[2]
    layout = prompt_layout(tokens)
    for key in [k for k, (ref, _, _) in _LAYOUTS.items() if ref() is None]:
        del _LAYOUTS[key]
    while len(_LAYOUTS) >= _LAYOUT_CACHE_SIZE:
        del _LAYOUTS[next(iter(_LAYOUTS))]
    _LAYOUTS[id(tokens)] = (weakref.ref(tokens), tokens._version, layout)
    return layout


def text_tower_or_none(model: nn.Module) -> nn.Module | None:
    """The module holding an open_clip text transformer (the CLIP, or `model.text`), else None."""
    tower = getattr(model, "text", model)
    transformer = getattr(tower, "transformer", None)
    if isinstance(transformer, nn.Module) and isinstance(getattr(transformer, "resblocks", None), nn.ModuleList):
        return tower
    return None


def _pool_type(tower: nn.Module) -> str | None:
    return getattr(tower, "pool_type", getattr(tower, "text_pool_type", None))


def supports_truncation(tower: nn.Module) -> bool:
    """Causal, argmax-pooled, no class token: positions after the last EOT cannot change a feature."""
    mask = getattr(tower, "attn_mask", None)
    return (
        getattr(tower, "cls_emb", None) is None
        and _pool_type(tower) == "argmax"
        and isinstance(mask, torch.Tensor)
        and mask.dim() == 2
        and all(hasattr(tower, name) for name in ("token_embedding", "positional_embedding", "ln_final"))
    )


def _is_plain_block(block: nn.Module) -> bool:
    attn = getattr(block, "attn", None)
    return (
        isinstance(block, ResidualAttentionBlock)
        and type(block).forward is ResidualAttentionBlock.forward
        and type(block).attention is ResidualAttentionBlock.attention
        and not hasattr(block, "ln_1_kv")
        and type(attn) is nn.MultiheadAttention
        and attn._qkv_same_embed_dim
        and attn.bias_k is None
        and not attn.add_zero_attn
        and attn.dropout == 0.0
        and all(isinstance(ls, (nn.Identity, LayerScale)) for ls in (block.ls_1, block.ls_2))
    )


def supports_prefix_sharing(tower: nn.Module) -> bool:
    """The tower's blocks are ones this module re-implements, and its causal mask is the plain one."""
    if not supports_truncation(tower) or getattr(tower.transformer, "grad_checkpointing", False):
        return False
    return all(_is_plain_block(block) for block in tower.transformer.resblocks)


_PLAIN_MASKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def causal_mask_is_plain(tower: nn.Module) -> bool:
    """The tower's mask is the plain causal one (-inf above the diagonal, 0 elsewhere); checked once per
    mask tensor."""
    mask = tower.attn_mask
    cached = _PLAIN_MASKS.get(tower)
    if cached is not None and cached[0]() is mask:
        return cached[1]
    upper = torch.ones(mask.shape, dtype=torch.bool, device=mask.device).triu(1)
    plain = (
        mask.shape[0] == mask.shape[1]
        and bool(torch.equal(torch.isneginf(mask), upper))
        and bool((mask[~upper] == 0).all())
    )
    _PLAIN_MASKS[tower] = (weakref.ref(mask), plain)
    return plain


def _layer_scale(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x * module.gamma if isinstance(module, LayerScale) else x


def _softmax_fp32(scores: torch.Tensor) -> torch.Tensor:
    """Softmax in fp32 whatever the scores' dtype (CUDA's autocast does so for softmax, the CPU's does not;
    under fp16 weights nothing would). No copy for fp32 scores."""
    with fp32(scores.device):
        return scores.float().softmax(dim=-1)


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: PromptLayout,
    prefix_k: torch.Tensor | None = None,
    prefix_v: torch.Tensor | None = None,
    padding: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of the last q.shape[2] of k.shape[2] positions ([batch, heads, positions,
    head_dim]), every query also seeing the shared prefix keys/values [heads, prefix, head_dim];
    `padding` [batch, 1, 1, positions] hides padding keys.

    Written out rather than through `scaled_dot_product_attention`: the prefix keys and values are
    broadcast over the batch by the two einsums instead of being copied once per prompt (which doubled
    the memory held for the backward pass), and for these short suffixes it is no slower on a CPU.
    """
    # Scaling the queries makes them one contiguous tensor that the score matmul uses without a copy (the
    # projection's view of them is strided): less memory held for backward than scaling the scores.
    q = q * q.shape[-1] ** -0.5
    scores = q @ k.transpose(-1, -2)
    if q.shape[2] > 1:
        scores = scores.masked_fill(layout.hidden(q.shape[2], k.shape[2]), float("-inf"))
    if padding is not None:
        scores = scores.masked_fill(padding, float("-inf"))
    if prefix_k is None:
        return _softmax_fp32(scores).to(v.dtype) @ v
    p = prefix_k.shape[1]
    scores = torch.cat([torch.einsum("bhqd,hpd->bhqp", q, prefix_k), scores], dim=-1)
    probs = _softmax_fp32(scores).to(v.dtype)
    return probs[..., p:] @ v + torch.einsum("bhqp,hpd->bhqd", probs[..., :p], prefix_v)


def _shared_prefix_block(
    block: ResidualAttentionBlock,
    prefix: torch.Tensor | None,
    rows: torch.Tensor,
    layout: PromptLayout,
    last: bool,
    padded: bool,
):
    """One block over the shared prefix [prefix, width] and the packed suffix rows [rows, width].

    In the last block only the EOT rows come out ([prompts, width]) and the prefix is not updated.
    Attention runs per group of equally long suffixes, or with `padded` once over suffixes padded to the
    longest (fewer, larger kernels: better where launches cost more than the padding, on a GPU).
    """
    attn = block.attn
    width = rows.shape[-1]
    heads = attn.num_heads
    head_dim = width // heads
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    p = layout.prefix

    prefix_k = prefix_v = None
    if p:
        qkv_prefix = F.linear(block.ln_1(prefix), weight, bias).view(p, 3, heads, head_dim).permute(1, 2, 0, 3)
        q_prefix, prefix_k, prefix_v = qkv_prefix.unbind(0)  # [heads, prefix, head_dim]

    h = block.ln_1(rows)
    if last:
        # Only the EOT positions need a query; the others only give keys and values.
        kv = F.linear(h, weight[width:], None if bias is None else bias[width:]).view(-1, 2, heads, head_dim)
        q_eot = F.linear(h[layout.eot_rows], weight[:width], None if bias is None else bias[:width])
        q_eot = q_eot.view(-1, heads, 1, head_dim)
    else:
        qkv = F.linear(h, weight, bias).view(-1, 3, heads, head_dim)

    if padded:
        # One attention call over every prompt, suffixes padded to the longest: the padding sits after each
        # suffix, so the causal mask already hides it from every real query except the last block's EOT
        # queries, which get a padding mask. Padding queries' outputs are dropped.
        if last:
            k, v = kv[layout.padded_rows].permute(2, 0, 3, 1, 4).unbind(0)
            out = _attend(q_eot, k, v, layout, prefix_k, prefix_v, layout.padding)
            out = out.reshape(-1, width)
        else:
            q, k, v = qkv[layout.padded_rows].permute(2, 0, 3, 1, 4).unbind(0)
            out = _attend(q, k, v, layout, prefix_k, prefix_v)
            out = out.transpose(1, 2).reshape(-1, width)[layout.unpadded]
    else:
        # One split per tensor, not a slice per group: a slice's backward writes into a zero tensor of the
        # whole packed size, once per group.
        sizes = [count * length for length, count, _ in layout.groups]
        if last:
            kv_groups = kv.split(sizes)
            q_groups = q_eot.split([count for _, count, _ in layout.groups])
        else:
            qkv_groups = qkv.split(sizes)
        outputs = []
        for g, (length, count, _) in enumerate(layout.groups):
            if last:
                k, v = kv_groups[g].view(count, length, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
                q = q_groups[g]
            else:
                q, k, v = qkv_groups[g].view(count, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            out = _attend(q, k, v, layout, prefix_k, prefix_v)
            outputs.append(out.transpose(1, 2).reshape(-1, width))
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    residual = rows[layout.eot_rows] if last else rows
    x = residual + _layer_scale(block.ls_1, attn.out_proj(out))
    x = x + _layer_scale(block.ls_2, block.mlp(block.ln_2(x)))

    if p and not last:
        out_prefix = _attend(q_prefix[None], prefix_k[None], prefix_v[None], layout)
        out_prefix = out_prefix.transpose(1, 2).reshape(p, width)
        prefix = prefix + _layer_scale(block.ls_1, attn.out_proj(out_prefix))
        prefix = prefix + _layer_scale(block.ls_2, block.mlp(block.ln_2(prefix)))
    return prefix, x


def _project(tower: nn.Module, x: torch.Tensor) -> torch.Tensor:
    projection = tower.text_projection
    if isinstance(projection, nn.Linear):
        return projection(x)
    if projection is not None:
        return x @ projection
    return x


def encode_shared_prefix(
    tower: nn.Module,
    tokens: torch.Tensor,
    layout: PromptLayout | None = None,
    padded_attention: bool | None = None,
    context: PromptContext | None = None,
) -> torch.Tensor:
    """Unnormalised features, the shared prefix computed once and the suffixes packed (see the module doc).

    `context` puts learned vectors into the shared prefix (CoOp's `[SOS][ctx_1..ctx_M]`, MaPLe's deep
    text prompts): they lie inside the prefix every prompt shares, so they are computed once per step,
    whatever the number of classes, and the gradient reaches them through every prompt's attention.

    `padded_attention`: one attention call per block over suffixes padded to the longest, instead of one
    per suffix length. By default on CUDA, where kernel launches dominate these small attention problems,
    unless padding would more than double the positions (one long prompt among short ones). On a CPU the
    two take the same time, and the grouped one holds less memory.
    """
    layout = layout or cached_prompt_layout(tokens)
    padded = padded_attention
    if padded is None:
        padded = tokens.device.type == "cuda" and layout.padded_rows.numel() <= 2 * layout.rows
    dtype = tower.transformer.get_cast_dtype()
    embedding, positional = tower.token_embedding, tower.positional_embedding
    rows = embedding(layout.suffix_tokens).to(dtype) + positional[layout.suffix_positions].to(dtype)
    prefix = None
    if layout.prefix:
        prefix = embedding(layout.prefix_tokens).to(dtype)
        if context is not None:
            context.check(layout.prefix)
            prefix = context.splice(prefix, 0)
        prefix = prefix + positional[: layout.prefix].to(dtype)
    elif context is not None:
        context.check(0)
    blocks = tower.transformer.resblocks
    for i, block in enumerate(blocks):
        if i and context is not None:
            prefix = context.splice(prefix, i)
        prefix, rows = _shared_prefix_block(block, prefix, rows, layout, last=i == len(blocks) - 1, padded=padded)
    x = tower.ln_final(rows)
    return _project(tower, x[layout.restore])


def encode_truncated(tower: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Unnormalised features, computing positions only up to the batch's last EOT token."""
    return encode_with_context(tower, tokens, None)


def fp32(device: torch.device):
    """A region computed in fp32: autocast is off inside it (a no-op when none is on)."""
    return torch.autocast(device.type, enabled=False)


def normalize_fp32(features: torch.Tensor) -> torch.Tensor:
    """`features / |features|` along the last dimension, in fp32 outside autocast, whatever their dtype."""
    with fp32(features.device):
        return F.normalize(features.float(), dim=-1)


def encode_with_context(
    tower: nn.Module, tokens: torch.Tensor, context: PromptContext | None, *, truncate: bool = True
) -> torch.Tensor:
    """Unnormalised features of prompts carrying learned context, the straightforward way: every prompt's
    whole sequence through open_clip's own blocks, the context spliced in before the blocks that have one
    (as CoOp's and MaPLe's text encoders do). ``truncate=False`` keeps all 77 positions, exactly the
    reference implementations' computation; ``truncate=True`` stops at the batch's last EOT token, which
    cannot change a causal, argmax-pooled feature."""
    eot = tokens.argmax(dim=-1)
    length = int(eot.max()) + 1 if truncate else tokens.shape[1]
    dtype = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(tokens[:, :length]).to(dtype)
    if context is not None:
        x = context.splice(x, 0)
    x = x + tower.positional_embedding[:length].to(dtype)
    mask = tower.attn_mask[:length, :length]
    if context is None:
        x = tower.transformer(x, attn_mask=mask)
    else:  # block by block, to splice the context in where it has vectors
        batch_first = getattr(tower.transformer, "batch_first", True)
        for i, block in enumerate(tower.transformer.resblocks):
            if i:
                x = context.splice(x, i)
            x = block(x, attn_mask=mask) if batch_first else block(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
    x = tower.ln_final(x)
    return _project(tower, x[torch.arange(x.shape[0], device=x.device), eot])


def encode_prompts(
    model: nn.Module, tokens: torch.Tensor, *, share_prefix: bool = True, context: PromptContext | None = None
) -> torch.Tensor:
    """Normalised fp32 text features of `tokens` [prompts, context], equal to open_clip's full-length
    `model.encode_text` to float tolerance, by the fastest exact path the text tower allows. The tower runs
    in the precision around it (autocast, or its weights' dtype); the normalisation is done in fp32.

    With ``context`` the prompts carry learned vectors (see `PromptContext`), equal to the straightforward
    full-length computation (`encode_with_context(..., truncate=False)`) to float tolerance. Raises
    `ValueError` for a text tower that cannot take embeddings (Hugging Face towers, CoCa's class token,
    non-argmax pooling): prompt learning needs an open_clip causal text transformer."""
    tower = text_tower_or_none(model)
    if context is not None:
        if tower is None or not supports_truncation(tower) or not causal_mask_is_plain(tower):
            raise ValueError(f"{type(model).__name__}: learned prompts need an open_clip text transformer with a "
                             "causal mask and end-of-text pooling")
        if share_prefix and supports_prefix_sharing(tower):
            return normalize_fp32(encode_shared_prefix(tower, tokens, context=context))
        return normalize_fp32(encode_with_context(tower, tokens, context))
    if tower is None or tokens.shape[0] == 0 or not supports_truncation(tower) or not causal_mask_is_plain(tower):
        return normalize_fp32(model.encode_text(tokens))
    if share_prefix and supports_prefix_sharing(tower):
        return normalize_fp32(encode_shared_prefix(tower, tokens))
    return normalize_fp32(encode_truncated(tower, tokens))
