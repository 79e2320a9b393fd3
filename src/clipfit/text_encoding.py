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
   group of equally long suffixes, on a view of the packed tokens.
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
    masks: dict[int, torch.Tensor] = field(default_factory=dict, compare=False)

    @property
    def rows(self) -> int:
        return int(self.suffix_tokens.shape[0])

    def attention_mask(self, suffix_length: int) -> torch.Tensor:
        """Boolean [suffix, prefix + suffix]: every prefix key, and the suffix keys up to the query."""
        mask = self.masks.get(suffix_length)
        if mask is None:
            device = self.suffix_tokens.device
            query = torch.arange(suffix_length, device=device)[:, None]
            key = torch.arange(self.prefix + suffix_length, device=device)[None, :]
            mask = key <= query + self.prefix
            self.masks[suffix_length] = mask
        return mask


def prompt_layout(tokens: torch.Tensor) -> PromptLayout:
    """Analyse a [prompts, context] token tensor (argmax pooling: the EOT token has the highest id)."""
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
    for rank, i in enumerate(order):
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
    return PromptLayout(
        length=length,
        prefix=prefix,
        prefix_tokens=tokens[0, :prefix],
        suffix_tokens=head[order_t][keep],
        suffix_positions=positions.expand(prompts, length)[keep],
        eot_rows=torch.tensor(eot_rows, device=device),
        restore=torch.tensor(restore, device=device),
        groups=tuple(tuple(g) for g in groups),
    )


# The class prompts of a method are one buffer encoded at every step: analyse them once. Keyed by the
# tensor object itself (a weak reference) and its in-place version counter, so a changed or new token
# tensor is analysed afresh.
_LAYOUTS: dict[int, tuple[weakref.ref, int, PromptLayout]] = {}
_LAYOUT_CACHE_SIZE = 8


def cached_prompt_layout(tokens: torch.Tensor) -> PromptLayout:
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
    plain = mask.shape[0] == mask.shape[1] and bool(torch.equal(torch.isneginf(mask), upper)) and bool((mask[~upper] == 0).all())
    _PLAIN_MASKS[tower] = (weakref.ref(mask), plain)
    return plain


def _layer_scale(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x * module.gamma if isinstance(module, LayerScale) else x


def _shared_prefix_block(block: ResidualAttentionBlock, prefix: torch.Tensor | None, rows: torch.Tensor, layout: PromptLayout, last: bool):
    """One block over the shared prefix [prefix, width] and the packed suffix rows [rows, width].

    In the last block only the EOT rows come out ([prompts, width]) and the prefix is not updated.
    """
    attn = block.attn
    width = rows.shape[-1]
    heads = attn.num_heads
    head_dim = width // heads
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    p = layout.prefix

    prefix_k = prefix_v = None
    if p:
        h_prefix = block.ln_1(prefix)
        qkv_prefix = F.linear(h_prefix, weight, bias).view(1, p, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        q_prefix, prefix_k, prefix_v = qkv_prefix.unbind(0)  # [1, heads, prefix, head_dim]

    h = block.ln_1(rows)
    if last:
        kv_bias = None if bias is None else bias[width:]
        kv = F.linear(h, weight[width:], kv_bias).view(-1, 2, heads, head_dim)
        q_bias = None if bias is None else bias[:width]
        q_eot = F.linear(h[layout.eot_rows], weight[:width], q_bias).view(-1, heads, head_dim)
    else:
        qkv = F.linear(h, weight, bias).view(-1, 3, heads, head_dim)

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
            q = q_groups[g].unsqueeze(2)  # [count, heads, 1, head_dim]
            mask = None  # the EOT query is the group's last position: it sees every key
        else:
            q, k, v = qkv_groups[g].view(count, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            mask = layout.attention_mask(length) if p else None
        if p:
            k = torch.cat([prefix_k.expand(count, -1, -1, -1), k], dim=2)
            v = torch.cat([prefix_v.expand(count, -1, -1, -1), v], dim=2)
        if mask is None and not last:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        outputs.append(out.transpose(1, 2).reshape(-1, width))
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    residual = rows[layout.eot_rows] if last else rows
    x = residual + _layer_scale(block.ls_1, attn.out_proj(out))
    x = x + _layer_scale(block.ls_2, block.mlp(block.ln_2(x)))

    if p and not last:
        out_prefix = F.scaled_dot_product_attention(q_prefix, prefix_k, prefix_v, is_causal=True)
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


def encode_shared_prefix(tower: nn.Module, tokens: torch.Tensor, layout: PromptLayout | None = None) -> torch.Tensor:
    """Unnormalised features, the shared prefix computed once and the suffixes packed (see the module doc)."""
    layout = layout or cached_prompt_layout(tokens)
    dtype = tower.transformer.get_cast_dtype()
    embedding, positional = tower.token_embedding, tower.positional_embedding
    rows = embedding(layout.suffix_tokens).to(dtype) + positional[layout.suffix_positions].to(dtype)
    prefix = None
    if layout.prefix:
        prefix = embedding(layout.prefix_tokens).to(dtype) + positional[: layout.prefix].to(dtype)
    blocks = tower.transformer.resblocks
    for i, block in enumerate(blocks):
        prefix, rows = _shared_prefix_block(block, prefix, rows, layout, last=i == len(blocks) - 1)
    x = tower.ln_final(rows)
    return _project(tower, x[layout.restore])


def encode_truncated(tower: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Unnormalised features, computing positions only up to the batch's last EOT token."""
    eot = tokens.argmax(dim=-1)
    length = int(eot.max()) + 1
    dtype = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(tokens[:, :length]).to(dtype)
    x = x + tower.positional_embedding[:length].to(dtype)
    x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
    x = tower.ln_final(x)
    return _project(tower, x[torch.arange(x.shape[0], device=x.device), eot])


def encode_prompts(model: nn.Module, tokens: torch.Tensor, *, share_prefix: bool = True) -> torch.Tensor:
    """Normalised text features of `tokens` [prompts, context], equal to open_clip's full-length
    `model.encode_text` to float tolerance, by the fastest exact path the text tower allows."""
    tower = text_tower_or_none(model)
    if tower is None or tokens.shape[0] == 0 or not supports_truncation(tower) or not causal_mask_is_plain(tower):
        return F.normalize(model.encode_text(tokens), dim=-1)
    if share_prefix and supports_prefix_sharing(tower):
        return F.normalize(encode_shared_prefix(tower, tokens), dim=-1)
    return F.normalize(encode_truncated(tower, tokens), dim=-1)
