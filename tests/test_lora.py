"""CLIP-LoRA's rules, one test each, on the tiny random-init CLIP (Zanella and Ben Ayed, "Low-Rank Few-Shot
Adaptation of Vision-Language Models", CVPRW 2024; official code MaxZanella/CLIP-LoRA @358f0d7).

References are computed independently of the method's code: plain open_clip models (the untouched one,
and one loaded from the merged state dict), `torch.nn.MultiheadAttention` itself, and attention written
out by hand from the weights and factors."""

from __future__ import annotations

import copy
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipfit import api
from clipfit.backbone import load_backbone
from clipfit.config import RunConfig
from clipfit.errors import ClipFitError
from clipfit.methods.lora import LoRAMultiheadAttention, attach_lora
from clipfit.precision import apply_precision
from clipfit.runner import resolve

from conftest import TINY_MODEL
from test_methods import build, colour_batch

TOL = dict(rtol=1e-5, atol=1e-5)


def plain_logits(model: nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP's logit scale x cosine of plain open_clip's features."""
    with torch.no_grad():
        image = F.normalize(model.encode_image(images), dim=-1)
        text = F.normalize(model.encode_text(tokens), dim=-1)
        return model.logit_scale.exp() * image @ text.t()


def randomise_b(method, std: float = 0.5, seed: int = 7) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in method.lora.named_parameters():
            if name.endswith(".B"):
                p.copy_(torch.randn(p.shape, generator=g) * std)


def lora_attentions(method) -> list[nn.Module]:
    return [m for m in method.clip.modules() if isinstance(m, LoRAMultiheadAttention)]


def test_zero_initialised_b_gives_the_base_models_logits_in_both_towers():
    method = build("clip-lora").eval()
    assert len(lora_attentions(method)) == 4  # 2 blocks x 2 towers of the tiny CLIP
    assert all(p.abs().sum() == 0 for n, p in method.lora.named_parameters() if n.endswith(".B"))
    assert all(p.abs().sum() > 0 for n, p in method.lora.named_parameters() if n.endswith(".A"))
    base = load_backbone(TINY_MODEL, "none").model.eval()  # the same seeded random init, untouched
    images, _ = colour_batch(n=6)
    with torch.no_grad():
        torch.testing.assert_close(method.encode_images(images), F.normalize(base.encode_image(images), dim=-1), **TOL)
        torch.testing.assert_close(method.class_features(), F.normalize(base.encode_text(method.prompt_tokens), dim=-1),
                                   **TOL)
        logits = method.logits(images, method.classifier())
    torch.testing.assert_close(logits, plain_logits(base, images, method.prompt_tokens), **TOL)


@pytest.mark.parametrize("matrices", ["qkv", "qvo"])
def test_unmerged_equals_merged_into_plain_open_clip(matrices):
    method = build("clip-lora", matrices=matrices)
    randomise_b(method)
    method.eval()
    merged = open_clip.create_model(TINY_MODEL, pretrained=None)
    merged.load_state_dict(method.merged_backbone_state())
    merged.eval()
    images, _ = colour_batch(n=6)
    with torch.no_grad():
        ours = method.logits(images, method.classifier())
    theirs = plain_logits(merged, images, method.prompt_tokens)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    base = plain_logits(load_backbone(TINY_MODEL, "none").model.eval(), images, method.prompt_tokens)
    assert (ours - base).abs().max() > 0.1  # the update moved the logits: the comparison is not vacuous


def test_merging_leaves_the_backbone_and_its_keys_untouched():
    method = build("clip-lora", matrices="qkvo")
    randomise_b(method)
    before = {k: v.clone() for k, v in method.clip.state_dict().items()}
    state = method.merged_backbone_state()
    assert set(state) == set(before) == set(open_clip.create_model(TINY_MODEL, pretrained=None).state_dict())
    assert all(torch.equal(method.clip.state_dict()[k], v) for k, v in before.items())
    changed = sorted(k for k in state if not torch.equal(state[k], before[k]))
    assert changed == sorted(f"{tower}.resblocks.{i}.attn.{w}" for tower in ("transformer", "visual.transformer")
                             for i in range(2) for w in ("in_proj_weight", "out_proj.weight"))


def _reference_attention(attention, factors, scale, x, mask):
    """Multi-head attention with LoRA terms on q, k, v, written out from the weights (batch first)."""
    n, length, width = x.shape
    heads = attention.num_heads
    w_q, w_k, w_v = attention.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attention.in_proj_bias.chunk(3)

    def project(w, b, f):
        return x @ w.t() + b + scale * (x @ f.A.t()) @ f.B.t()

    q, k, v = (project(w, b, factors[m]).reshape(n, length, heads, -1).transpose(1, 2)
               for w, b, m in ((w_q, b_q, "q"), (w_k, b_k, "k"), (w_v, b_v, "v")))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores + mask
    out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(n, length, width)
    return out @ attention.out_proj.weight.t() + attention.out_proj.bias


@pytest.mark.parametrize("tower", ["text", "image"])
def test_attention_equals_the_hand_written_lora_computation(tower):
    method = build("clip-lora")
    randomise_b(method)
    method.eval()
    scale = 1.0 / math.sqrt(2)  # alpha / sqrt(rank) at the defaults
    assert method.lora[tower][0]["q"].scale == pytest.approx(scale)
    if tower == "text":
        block, mask = method.clip.transformer.resblocks[0], method.clip.attn_mask[:9, :9]
    else:
        block, mask = method.clip.visual.transformer.resblocks[0], None
    attention = block.attn
    x = torch.randn(3, 9, attention.embed_dim, generator=torch.Generator().manual_seed(2))
    expected = _reference_attention(attention, method.lora[tower][0], scale, x, mask)
    with torch.no_grad():
        got = attention(x, x, x, need_weights=False, attn_mask=mask)[0]
        with_weights, weights = attention(x, x, x, attn_mask=mask)
    torch.testing.assert_close(got, expected, **TOL)
    torch.testing.assert_close(with_weights, expected, **TOL)
    assert weights.shape == (3, 9, 9)


@pytest.mark.parametrize("batch_first", [True, False])
def test_without_factors_the_wrapped_attention_is_torchs_multihead_attention(batch_first):
    torch.manual_seed(3)
    plain = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    wrapped = copy.deepcopy(plain)
    attach_lora(wrapped, {})
    x = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
    kv = torch.randn(2, 7, 16) if batch_first else torch.randn(7, 2, 16)
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    padding = torch.tensor([[False] * 6 + [True], [False] * 7])
    with torch.no_grad():
        cases = [((x, x, x), dict(attn_mask=causal)),
                 ((x, x, x), dict(attn_mask=torch.zeros(5, 5).masked_fill(causal, float("-inf")), need_weights=False)),
                 ((x, kv, kv), dict(key_padding_mask=padding)),
                 ((x, kv, kv), dict(key_padding_mask=padding, average_attn_weights=False)),
                 ((x[:, 0] if not batch_first else x[0],) * 3, dict(attn_mask=causal))]  # unbatched
        for args, kwargs in cases:
            (out, w), (ref, ref_w) = wrapped(*args, **kwargs), plain(*args, **kwargs)
            torch.testing.assert_close(out, ref, **TOL)
            if ref_w is not None:
                torch.testing.assert_close(w, ref_w, **TOL)


def test_dropout_touches_only_the_lora_branch():
    method = build("clip-lora")
    images, _ = colour_batch(n=6)
    with torch.no_grad():
        eval_logits = method.eval().logits(images, method.classifier())
        torch.manual_seed(0)
        train_logits = method.train().logits(images, method.classifier())
    torch.testing.assert_close(train_logits, eval_logits, rtol=0, atol=1e-5)  # B = 0: no branch, nothing dropped
    randomise_b(method)
    with torch.no_grad():
        eval_logits = method.eval().logits(images, method.classifier())
        torch.manual_seed(0)
        train_logits = method.train().logits(images, method.classifier())
    assert (train_logits - eval_logits).abs().max() > 1e-3  # with B != 0 the branch's dropout is on in training


def test_the_adapter_holds_only_the_factors_and_the_vit_b16_count_is_184320():
    method = build("clip-lora")
    state = method.adapter_state()
    assert method.backbone_parameters() == {}
    assert all(key.startswith("method.lora.") and key.endswith((".A", ".B")) for key in state)
    assert len(state) == 2 * 2 * 3 * 2  # towers x blocks x q/k/v x (A, B)
    assert state["method.lora.text.1.v.A"].shape == (2, 32) and state["method.lora.image.0.k.B"].shape == (32, 2)
    groups = api.count_parameters("clip-lora", "ViT-B-16")["groups"]
    assert groups == {"lora_image": 12 * 3 * 2 * (768 + 768), "lora_text": 12 * 3 * 2 * (512 + 512)}
    assert sum(groups.values()) == 184_320


def test_the_optimiser_defaults_are_adamw_with_a_per_iteration_cosine_over_500_x_shots(eurosat_root):
    config = RunConfig(method="clip-lora", model=TINY_MODEL, pretrained="none", dataset="eurosat",
                       data_root=str(eurosat_root), protocol="few-shot", shots=4)
    optim = resolve(config).optim
    got = (optim.optimizer, optim.schedule, optim.iterations, optim.batch_size)
    assert got == ("adamw", "cosine-iterations", 2000, 32)
    assert (optim.lr, optim.weight_decay, optim.warmup_epochs, optim.min_lr) == (2e-4, 1e-2, 0, 1e-6)
    from clipfit.methods import get_method

    lora = get_method("clip-lora")
    assert lora.optim_defaults("few-shot", "imagenet", 16)["iterations"] == 8000
    assert lora.optim_defaults("few-shot", "eurosat", 0)["iterations"] == 8000  # all images: the 16-shot budget


def test_the_image_tower_trains_only_when_it_has_lora():
    images, _ = colour_batch(n=2)
    text_only = build("clip-lora", encoder="text").train()
    assert not text_only.image_tower_trains and set(text_only.parameter_groups()) == {"lora_text"}
    assert not text_only.encode_images(images).requires_grad
    both = build("clip-lora").train()
    assert both.image_tower_trains and both.encode_images(images).requires_grad
    vision = build("clip-lora", encoder="vision")
    assert vision.image_tower_trains and set(vision.parameter_groups()) == {"lora_image"}
    assert type(vision.clip.transformer.resblocks[0].attn) is nn.MultiheadAttention  # the text tower untouched


def test_a_second_build_on_the_same_backbone_replaces_the_first():
    backbone = load_backbone(TINY_MODEL, "none")
    build("clip-lora", backbone=backbone)
    text_only = build("clip-lora", backbone=backbone, encoder="text")
    assert type(backbone.model.visual.transformer.resblocks[0].attn) is nn.MultiheadAttention
    assert backbone.model.transformer.resblocks[0].attn.lora_factors["q"] is text_only.lora["text"][0]["q"]


def test_fp16_weights_keep_the_attention_modules_and_fp32_factors():
    method = build("clip-lora")
    randomise_b(method)
    method.eval()
    images, _ = colour_batch(n=4)
    with torch.no_grad():
        reference = method.logits(images, method.classifier())
        apply_precision(method, "fp16-reference")
        attention = method.clip.transformer.resblocks[0].attn
        assert isinstance(attention, LoRAMultiheadAttention) and attention.in_proj_weight.dtype == torch.float16
        assert all(p.dtype == torch.float32 for p in method.lora.parameters())
        half = method.logits(images, method.classifier())
    torch.testing.assert_close(half, reference, rtol=0, atol=0.5)  # fp16 rounding of the logits


@pytest.mark.parametrize("option, value, message", [
    ("rank", 0, "option rank must be an integer >= 1"),
    ("alpha", -1.0, "option alpha must be a finite number > 0"),
    ("dropout", 1.0, "option dropout must be a number from 0 to below 1"),
    ("matrices", "qx", "option matrices must be distinct letters of 'qkvo'"),
    ("matrices", "", "option matrices must be distinct letters"),
    ("encoder", "audio", "option encoder must be one of both, text, vision"),
])
def test_options_that_cannot_work_are_refused_naming_the_option(option, value, message):
    with pytest.raises(ClipFitError, match=message):
        build("clip-lora", **{option: value})


def test_vision_lora_on_a_resnet_is_refused_and_both_falls_back_to_text():
    with pytest.raises(ClipFitError, match="encoder=vision, but the image tower has no attention blocks"):
        build("clip-lora", backbone=load_backbone("tiny-rn", "none"), encoder="vision")
    method = build("clip-lora", backbone=load_backbone("tiny-rn", "none"))
    assert set(method.parameter_groups()) == {"lora_text"} and "only the text tower" in method.notes[0]
