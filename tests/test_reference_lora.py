"""CLIP-LoRA against its official implementation's own numbers.

How the data was made (2026-11-30): a script ran the official code (MaxZanella/CLIP-LoRA @358f0d7,
`clip/model.py`, `clip/clip.py`'s `tokenize`, `loralib/utils.py`'s `apply_lora` and `loralib/layers.py`'s
`PlainMultiheadAttentionLoRA`/`LinearLoRA`, and the training step of `lora.py`'s `run_lora`), fp32 on CPU
with no autocast or GradScaler (the official trains under fp16 autocast), in `train()` mode:
1. The OpenAI-layout ViT-B/32 `clip.model.CLIP(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12)`, filled by
   `reference_clip.random_openai_state_dict(seed=0)` (which this test rebuilds bit for bit; its
   `logit_scale` is log 100, so the backbone's own scale equals the official fixed `logit_scale = 100` up
   to fp32 rounding of exp, and the logits are compared as they are).
2. `apply_lora` with encoder both, position all, params q k v, r 2, alpha 1 (scaling alpha / sqrt(r)) and
   the official default dropout_rate 0.25, after which every LoRA `nn.Dropout`'s p was set to 0: the
   official default code path (frozen output + (x (B A)^T) * scaling), made deterministic.
3. Every `w_lora_A` / `w_lora_B` overwritten from one `torch.Generator().manual_seed(20241014)`, in the
   order image tower then text tower, block 0..11, q, k, v, A then B: A ~ N(0, 1/768 or 1/512), B ~
   N(0, 0.02^2) (non-zero, so the update matters). Stored under our names `lora.<tower>.<block>.<m>.<A|B>`
   (official: `[visual.]transformer.resblocks.<block>.attn.<m>_proj.w_lora_<A|B>`).
4. One batch: `torch.manual_seed(1); torch.randn(8, 3, 224, 224)` (rebuilt here, its sum checked), labels
   stored, 5 class names with "a photo of a {}."; text features of the tokenized prompts and image
   features, each normalised, logits = 100 * cos, cross-entropy, `backward()`.
Stored: the tokenized prompts, the factor values, logits, CE and the gradient of every factor (184,320
values). Only these numbers are committed, never the official code.

The same script also ran the official dropout_rate 0 code path (`merge_lora_param`, then `sub_lora_data`
edits the weight's `.data` before backward): same logits and CE, but factor gradients up to 3.3% off,
because autograd then back-propagates through the un-merged weight; the dropout-p-0 path is the faithful one.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clipfit.backbone import load_backbone
from clipfit.methods import build_method

from reference_clip import random_openai_state_dict, reference_step

pytestmark = pytest.mark.reference

DATA = Path(__file__).parent / "data"
META = json.loads((DATA / "lora_reference_vitb32.json").read_text())
OPTIONS = {"rank": 2, "alpha": 1.0, "dropout": 0.0, "matrices": "qkv", "encoder": "both"}


@functools.lru_cache(maxsize=1)
def stored_outputs() -> dict[str, torch.Tensor]:
    return load_file(str(DATA / "lora_reference_vitb32.safetensors"))


@functools.lru_cache(maxsize=1)
def run():
    """(method, loss, parts, logits) of our clip-lora on the reference weights, factors and batch."""
    stored = stored_outputs()
    bb = load_backbone("ViT-B-32-quickgelu", "none")
    bb.model.load_state_dict(random_openai_state_dict({k: v.shape for k, v in bb.model.state_dict().items()}, seed=0))
    method = build_method("clip-lora", bb, META["classnames"], META["template"], OPTIONS)
    params = method.trainable_parameters()
    values = {k[len("value/"):]: v for k, v in stored.items() if k.startswith("value/")}
    assert sorted(params) == sorted(f"method.{n}" for n in values)  # the official factors, by our names
    with torch.no_grad():
        for n, v in values.items():
            params[f"method.{n}"].copy_(v)
    torch.manual_seed(1)
    images = torch.randn(8, 3, 224, 224)
    assert images.double().sum().item() == pytest.approx(META["batch"]["images_sum"], rel=1e-12)
    return method, *reference_step(method, images, stored["labels"].long())


def assert_close_rel(ours: torch.Tensor, theirs: torch.Tensor, rel: float, what: str):
    scale = theirs.abs().max().item()
    error = (ours.float() - theirs.float()).abs().max().item()
    assert error <= rel * scale, f"{what}: max error {error:.3g} vs scale {scale:.3g}"


def test_prompts_tokenize_as_the_official_prompts():
    method, *_ = run()
    assert torch.equal(method.prompt_tokens.cpu(), stored_outputs()["tokenized_prompts"].long())


def test_trainable_count_and_scale_are_the_official_ones():
    method, *_ = run()
    assert sum(p.numel() for p in method.trainable_parameters().values()) == META["n_trainable"]
    scales = [f.scale for blocks in method.lora.values() for factors in blocks for f in factors.values()]
    assert len(scales) == 72 and all(s == pytest.approx(META["lora"]["scaling"], rel=1e-12) for s in scales)


def test_logit_scale_is_the_official_fixed_100():
    method, *_ = run()
    assert method.backbone.logit_scale.item() == pytest.approx(META["logit_scale"], rel=1e-6)


def test_logits_and_ce_equal_the_official_ones():
    _, loss, parts, logits = run()
    assert_close_rel(logits, stored_outputs()["logits"], 2e-5, "logits")
    assert parts["ce"] == pytest.approx(META["ce"], rel=2e-5)
    assert loss.item() == pytest.approx(META["ce"], rel=2e-5)


def test_gradients_equal_the_official_ones():
    method, *_ = run()
    stored = stored_outputs()
    params = method.trainable_parameters()
    for key, theirs in stored.items():
        if key.startswith("grad/"):
            n = key[len("grad/"):]
            assert_close_rel(params[f"method.{n}"].grad, theirs, 1e-4, f"grad of {n}")
