"""Fast text encoding of class prompts is exact: features, gradients and the CLIPFit loss equal those of
the straightforward computation (open_clip's `encode_text` over all 77 positions, one pass per use)."""

from __future__ import annotations

import functools

import open_clip
import pytest
import torch
import torch.nn.functional as F

from clipfit import text_encoding
from clipfit.backbone import load_backbone, text_mlp_output_projections
from clipfit.methods import build_method

from conftest import TINY_MODEL

TOKENIZER = open_clip.get_tokenizer(TINY_MODEL)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: extra threads only add synchronisation (seconds of it on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
NAMES = ["cat", "golden retriever", "great white shark", "ice cream cone with sprinkles", "x", "red fox",
         "annual crop land"]
TEMPLATE = "a photo of a {}."


def tiny_vision() -> dict:
    return {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16}


@functools.cache
def _build_clip(custom_text: bool, text_cfg: tuple) -> torch.nn.Module:
    torch.manual_seed(0)
    text = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 2, **dict(text_cfg)}
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    model = cls(embed_dim=64, vision_cfg=tiny_vision(), text_cfg=text).eval()
    with torch.no_grad():  # random, non-zero biases everywhere, so that every bias matters
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln" in name:
                p.add_(0.05 * torch.randn_like(p))
    return model


def build_clip(custom_text: bool = False, **text_cfg) -> torch.nn.Module:
    """A random CLIP with a tiny image tower and a text tower built from `text_cfg`: by default
    ViT-B/16's text tower (width 512, 8 heads) with 2 layers instead of 12. Built once per config."""
    return _build_clip(custom_text, tuple(sorted(text_cfg.items())))


def reference(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return F.normalize(model.encode_text(tokens), dim=-1)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    """Equal to float tolerance, relative to the largest magnitude of the expected tensor."""
    scale = expected.abs().max().item() or 1.0
    diff = (actual - expected).abs().max().item()
    assert diff <= rel * scale, f"max abs diff {diff:.3g} > {rel:g} * {scale:.3g}"


def text_bias_grads(model: torch.nn.Module, encode, tokens: torch.Tensor) -> list[torch.Tensor]:
    model.requires_grad_(False)
    biases = [linear.bias for linear in text_mlp_output_projections(model)]
    for b in biases:
        b.requires_grad_(True)
    features = encode(model, tokens)
    weights = torch.linspace(-1.0, 1.0, features.numel()).view_as(features)
    return list(torch.autograd.grad((features * weights).sum(), biases))


PROMPT_SETS = {
    "template with a common prefix": [TEMPLATE.format(n) for n in NAMES],
    "bare names (only the start token in common)": NAMES,
    "a single prompt": [TEMPLATE.format("golden retriever")],
    "identical prompts": [TEMPLATE.format("cat")] * 3,
    "lengths from 1 to the whole context": ["x", TEMPLATE.format("cat"), " ".join(["word"] * 100)],
}


def shared_prefix(padded: bool):
    def encode(model, tokens):
        tower = text_encoding.text_tower_or_none(model)
        return F.normalize(text_encoding.encode_shared_prefix(tower, tokens, padded_attention=padded), dim=-1)

    return encode


ATTENTION = {"grouped attention": shared_prefix(False), "padded attention": shared_prefix(True)}


@pytest.mark.parametrize("encode", ATTENTION.values(), ids=ATTENTION.keys())
@pytest.mark.parametrize("prompts", PROMPT_SETS.values(), ids=PROMPT_SETS.keys())
def test_features_equal_full_length_encode_text(prompts, encode):
    model = build_clip()
    tokens = TOKENIZER(prompts)
    with torch.no_grad():
        assert_close(encode(model, tokens), reference(model, tokens))


@pytest.mark.parametrize("encode", ATTENTION.values(), ids=ATTENTION.keys())
@pytest.mark.parametrize("prompts", PROMPT_SETS.values(), ids=PROMPT_SETS.keys())
def test_text_bias_gradients_equal_those_of_full_length_encode_text(prompts, encode):
    model = build_clip()
    tokens = TOKENIZER(prompts)
    ours = text_bias_grads(model, encode, tokens)
    expected = text_bias_grads(model, reference, tokens)
    for layer, (a, b) in enumerate(zip(ours, expected)):
        assert b.abs().max() > 0, f"layer {layer}: the check needs a non-zero gradient"
        assert_close(a, b, rel=1e-4)


def test_backbone_encode_text_is_the_fast_encoder():
    backbone = load_backbone(TINY_MODEL, "none")
    tokens = backbone.tokenize([TEMPLATE.format(n) for n in NAMES])
    with torch.no_grad():
        assert torch.equal(backbone.encode_text(tokens), text_encoding.encode_prompts(backbone.model, tokens))
        assert_close(backbone.encode_text(tokens), reference(backbone.model, tokens))


def test_tokens_without_any_common_prefix_are_exact():
    model = build_clip()
    tokens = TOKENIZER(NAMES)
    tokens = torch.cat([tokens[:, 1:], tokens[:, :1] * 0], dim=1)  # drop the start token
    tokens[0, 0] = 1  # and make the first positions differ
    assert text_encoding.prompt_layout(tokens).prefix == 0
    with torch.no_grad():
        for encode in ATTENTION.values():
            assert_close(encode(model, tokens), reference(model, tokens))


def test_shared_prefix_is_the_start_token_and_the_template_words_and_suffixes_are_packed():
    prompts = [TEMPLATE.format(n) for n in NAMES]
    tokens = TOKENIZER(prompts)
    layout = text_encoding.prompt_layout(tokens)
    eot = tokens.argmax(dim=-1)
    assert layout.prefix == len(TOKENIZER(["a photo of a"])[0].nonzero()) - 1  # <sot> a photo of a
    assert torch.equal(layout.prefix_tokens, tokens[0, : layout.prefix])
    assert layout.rows == int((eot - layout.prefix + 1).sum())
    assert [count for _, count, _ in layout.groups] and sum(count for _, count, _ in layout.groups) == len(prompts)
    lengths = [length for length, _, _ in layout.groups]
    assert lengths == sorted(lengths, reverse=True)


def test_layout_is_analysed_once_per_token_tensor_and_again_after_an_in_place_change():
    tokens = TOKENIZER([TEMPLATE.format(n) for n in NAMES])
    first = text_encoding.cached_prompt_layout(tokens)
    assert text_encoding.cached_prompt_layout(tokens) is first
    tokens[0, 1] += 1
    assert text_encoding.cached_prompt_layout(tokens) is not first
    assert text_encoding.cached_prompt_layout(tokens.clone()) is not first


def test_layer_scale_towers_take_the_fast_path_exactly():
    model = build_clip(ls_init_value=0.5)
    tokens = TOKENIZER([TEMPLATE.format(n) for n in NAMES])
    assert text_encoding.supports_prefix_sharing(text_encoding.text_tower_or_none(model))
    ours = text_bias_grads(model, text_encoding.encode_prompts, tokens)
    for a, b in zip(ours, text_bias_grads(model, reference, tokens)):
        assert_close(a, b, rel=1e-4)


@pytest.mark.parametrize(
    "text_cfg, fast",
    [
        ({"qk_norm": True}, False),  # custom attention blocks: truncation only
        ({"no_causal_mask": True}, False),  # bidirectional: every position matters
        ({"embed_cls": True}, False),  # CoCa's class token, pooled last
        ({"pool_type": "last"}, False),
        ({}, True),
    ],
    ids=["custom blocks", "bidirectional", "class token", "last-token pooling", "plain (CustomTextCLIP)"],
)
def test_towers_the_fast_path_cannot_take_fall_back_exactly(text_cfg, fast):
    model = build_clip(custom_text=True, width=64, heads=4, **text_cfg)
    tokens = TOKENIZER([TEMPLATE.format(n) for n in NAMES])
    assert text_encoding.supports_prefix_sharing(model.text) is fast
    with torch.no_grad():
        assert_close(text_encoding.encode_prompts(model, tokens), reference(model, tokens))


def test_evaluation_under_inference_mode_is_exact_and_leaves_a_reusable_layout():
    model = build_clip()
    tokens = TOKENIZER([TEMPLATE.format(n) for n in NAMES])
    with torch.inference_mode():
        features = text_encoding.encode_prompts(model, tokens)
    assert_close(features, reference(model, tokens).detach())
    text_bias_grads(model, text_encoding.encode_prompts, tokens)  # the cached layout works with autograd


def straightforward_clipfit_loss(method, images, labels):
    """The reference implementation's step: full-length text tower twice, once for the logits, once for
    the distillation term."""
    clip = method.clip
    image = F.normalize(clip.encode_image(images), dim=-1)
    logits = clip.logit_scale.exp() * image @ reference(clip, method.prompt_tokens).t()
    ce = F.cross_entropy(logits, labels)
    cos = F.cosine_similarity(reference(clip, method.prompt_tokens), method.pretrained_class_features, dim=-1)
    return ce + method.config.beta * (1.0 - cos.mean()), logits


def test_clipfit_loss_logits_and_gradients_equal_the_straightforward_two_pass_step():
    classnames = NAMES
    method = build_method("clipfit", load_backbone(TINY_MODEL, "none"), classnames, TEMPLATE, {"beta": 8.0})
    method.prepare_training()
    pretrained = reference(method.clip, method.prompt_tokens).detach()
    assert_close(method.pretrained_class_features, pretrained)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in method.trainable_parameters().values():
            p.add_(0.05 * torch.randn_like(p))
    images, labels = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4, 5])
    params = method.trainable_parameters()

    loss = method.training_loss(images, labels).total
    logits = method.logits(images, method.class_features())
    ours = torch.autograd.grad(loss, list(params.values()))
    expected_loss, expected_logits = straightforward_clipfit_loss(method, images, labels)
    expected = torch.autograd.grad(expected_loss, list(params.values()))

    assert_close(loss.detach(), expected_loss.detach())
    assert_close(logits.detach(), expected_logits.detach())
    for name, a, b in zip(params, ours, expected):
        assert_close(a, b, rel=1e-4), name
