"""VPT-shallow and VPT-deep against the PEFT-for-CLIP study's own code and numbers.

How the data was made (2026-11-30): a script imported the study's VPT model unchanged (Andy-LZH/peft4clip
@8c00629, `src/model/CLIP_VPT/VisionPromptCLIP.py` and `Embeddings.py`; only its config objects were
stubbed with plain namespaces: patch size (32, 32), hidden size 768, `PROMPT.PROJECT` 768, `NUM_TOKENS` 5,
location prepend, random init) on OpenAI's `clip.model.CLIP(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12)`
(openai/CLIP @d05afc4, the study's dependency), built directly in fp32 on CPU and filled by
`reference_clip.random_openai_state_dict(seed=0)` (rebuilt here bit for bit), backbone frozen, in `eval()`
mode (so the study's `nn.Dropout(0.1)` on the projected prompts is off), no autocast:
1. Shallow and deep, N = 5: the prompts, the projection Linear(768, 768) and the head Linear(512, 5)
   overwritten from `torch.Generator().manual_seed(20241014 + deep)` by `seeded_values` below (redrawn
   here, their sums checked). Ours keeps one [blocks, N, 768] tensor; the study's `prompt_embeddings`
   [1, N, 768] is our block 0 and its `deep_prompt_embeddings` [11, N, 768] our blocks 1..11.
2. One batch: `torch.manual_seed(1); torch.randn(4, 3, 224, 224)` (rebuilt here, its sum checked), labels
   stored; features = `incorporate_prompt` then `forward_shallow` / `forward_deep` (unnormalised, after
   `ln_post` and the projection), `--type vision` logits = `head(features)` (equal to the study's
   `forward`), cross-entropy, `backward()`; and `vision_language_forward` with the study's VTAB template
   "a photo of a {}" over 5 class names (unnormalised image feature @ normalised text features, no scale).
Stored: features, logits, CE, the VL logits, the gradients of the prompts (all blocks), the projection bias
and the head, and every 12th row of the projection weight's gradient (with the full gradient's norm), so
the file stays small. Only these numbers are committed, never the official code.

The study's VL logits differ from ours by design (`clipfit.methods.vpt`): ours are CLIP's logit scale x
cosine, which is the study's logits with the image side normalised and scaled by 100 (checked below).
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest
import torch

from clipfit.backbone import load_backbone
from clipfit.methods import build_method

from reference_clip import random_openai_state_dict

pytestmark = pytest.mark.reference

DATA = Path(__file__).parent / "data"
META = json.loads((DATA / "vpt_reference_vitb32.json").read_text())
N, WIDTH, PATCH, OUT_DIM = 5, 768, 32, 512
ROWS = torch.arange(0, WIDTH, 12)
METHODS = {"shallow": "vpt-shallow", "deep": "vpt-deep"}


@functools.lru_cache(maxsize=1)
def stored_outputs() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(DATA / "vpt_reference_vitb32.safetensors"))


def seeded_values(deep: bool) -> dict[str, torch.Tensor]:
    """The values both sides were given, by our parameter names (drawn in the study's init ranges)."""
    g = torch.Generator().manual_seed(META["value_seed"] + int(deep))
    blocks = 12 if deep else 1
    val = math.sqrt(6.0 / (3 * PATCH * PATCH + WIDTH))
    u = lambda shape, b: (torch.rand(shape, generator=g) * 2 - 1) * b  # noqa: E731
    return {
        "prompt_embeddings": u((blocks, N, WIDTH), val),
        "prompt_proj.weight": torch.randn(WIDTH, WIDTH, generator=g) * math.sqrt(2.0 / WIDTH),
        "prompt_proj.bias": u((WIDTH,), 1 / math.sqrt(WIDTH)),
        "head.weight": u((len(META["classnames"]), OUT_DIM), 1 / math.sqrt(OUT_DIM)),
        "head.bias": u((len(META["classnames"]),), 1 / math.sqrt(OUT_DIM)),
    }


@functools.lru_cache(maxsize=1)
def reference_backbone():
    bb = load_backbone("ViT-B-32-quickgelu", "none")
    bb.model.load_state_dict(random_openai_state_dict({k: v.shape for k, v in bb.model.state_dict().items()}, seed=0))
    return bb


def images() -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.randn(*META["batch"]["shape"])
    assert x.double().sum().item() == pytest.approx(META["batch"]["images_sum"], rel=1e-12)
    return x


def build(variant: str, type_: str):
    options = {"type": type_, "num_tokens": N}
    method = build_method(METHODS[variant], reference_backbone(), META["classnames"], META["template"], options)
    values = seeded_values(variant == "deep")
    for n, v in values.items():
        assert v.double().sum().item() == pytest.approx(META[variant]["value_sums"][n], rel=1e-9, abs=1e-9)
    params = method.trainable_parameters()
    wanted = values if type_ == "vision" else {k: v for k, v in values.items() if not k.startswith("head.")}
    assert sorted(params) == sorted(f"method.{n}" for n in wanted)
    with torch.no_grad():
        for n, v in wanted.items():
            params[f"method.{n}"].copy_(v)
    method.prepare_training()
    method.eval()  # the prompt dropout off, as the reference ran
    return method


@functools.lru_cache(maxsize=2)
def run(variant: str):
    """(method, features, loss, parts, logits) of our type-vision VPT on the reference values and batch."""
    method = build(variant, "vision")
    x = images()
    features = method.encode_images(x)
    result = method.feature_loss(features, stored_outputs()["labels"].long())
    for p in method.trainable_parameters().values():
        p.grad = None
    method.backward(result, lambda t: t)
    loss, parts = result.total, result.term_values()
    with torch.no_grad():
        logits = method.logits(x, method.classifier())
    return method, features.detach(), loss, parts, logits


def assert_close_rel(ours: torch.Tensor, theirs: torch.Tensor, rel: float, what: str):
    scale = theirs.abs().max().item()
    error = (ours.float() - theirs.float()).abs().max().item()
    assert error <= rel * scale, f"{what}: max error {error:.3g} vs scale {scale:.3g}"


@pytest.mark.parametrize("variant", ["shallow", "deep"])
def test_image_features_equal_the_official_ones(variant):
    _, features, *_ = run(variant)
    assert_close_rel(features, stored_outputs()[f"{variant}/features"], 2e-5, "features")


@pytest.mark.parametrize("variant", ["shallow", "deep"])
def test_head_logits_and_ce_equal_the_official_ones(variant):
    _, _, loss, parts, logits = run(variant)
    assert_close_rel(logits, stored_outputs()[f"{variant}/logits"], 2e-5, "logits")
    assert parts["ce"] == pytest.approx(META[variant]["ce"], rel=2e-5)
    assert loss.item() == pytest.approx(META[variant]["ce"], rel=2e-5)


@pytest.mark.parametrize("variant", ["shallow", "deep"])
def test_gradients_equal_the_official_ones(variant):
    method, *_ = run(variant)
    stored = stored_outputs()
    params = method.trainable_parameters()
    for n in ("prompt_embeddings", "prompt_proj.bias", "head.weight", "head.bias"):
        assert_close_rel(params[f"method.{n}"].grad, stored[f"{variant}/grad/{n}"], 1e-4, f"grad of {n}")
    w = params["method.prompt_proj.weight"].grad
    assert_close_rel(w[ROWS], stored[f"{variant}/grad_rows/prompt_proj.weight"], 1e-4, "grad of prompt_proj.weight")
    assert w.double().norm().item() == pytest.approx(META[variant]["proj_weight_grad_norm"], rel=1e-4)


@pytest.mark.parametrize("variant", ["shallow", "deep"])
def test_vision_language_logits_are_the_official_ones_normalised_and_scaled(variant):
    method = build(variant, "vision-language")
    stored = stored_outputs()
    assert torch.equal(method.prompt_tokens.cpu(), stored["tokenized_prompts"].long())
    with torch.no_grad():
        x = images()
        features = method.encode_images(x)
        logits = method.logits(x, method.classifier())
    assert_close_rel(features, stored[f"{variant}/features"], 2e-5, "features")
    theirs = stored[f"{variant}/vl_logits"]  # features @ normalised text, no scale
    scale = method.backbone.logit_scale.item()
    assert scale == pytest.approx(100.0, rel=1e-6)
    expected = scale * theirs / stored[f"{variant}/features"].norm(dim=-1, keepdim=True)
    assert_close_rel(logits, expected, 2e-5, "vision-language logits")
