"""Precisions on the built-in mini CLIP: bf16, fp16 and the reference's fp16 give fp32's loss terms.

The tolerances, and where they come from (u = unit roundoff: bf16 2^-8, fp16 2^-11, fp32 2^-24):

- Distillation term at the first step: tuned equals pretrained, and the frozen target is computed by the
  same forward pass (same precision, same kernels) as the tuned features, so the two are bit for bit
  equal and the term, a sum of squared differences, is exactly 0, as in fp32; so is its gradient.
- Cross-entropy, computed in fp32: equal to the float64 cross-entropy of the logits
  s * cos(image, class) built from the features that precision gives, to fp32 rounding (FP32_LOSS_TOL:
  a mean over 8 samples of a log-sum-exp over 5 logits of size <= s = 27 is a few dozen fp32 operations on
  numbers <= 30, each rounded by 30 * 2^-24 = 1.8e-6 at most; 1e-5). bf16 logits, as before this rule,
  miss it by ~1e-3.
- Cross-entropy against fp32's: CE is 2-Lipschitz in the max-norm of the logits (|d logsumexp| <= max
  |dz|, and |d z_y| <= max |dz|), so |CE_p - CE_fp32| <= 2 max |z_p - z_fp32|; for unit features
  |d cos(f, t)| <= |df| + |dt|, so max |dz| <= s (max |df| + max |dt|). Each unit feature is rounded to the
  precision at least once (relative error up to u); we allow FEATURE_BUDGET = 2u per feature (measured on
  the mini CLIP: 0.65u to 1.23u), so |CE_p - CE_fp32| <= 2 s * 4u: 0.84 for bf16, 0.11 for fp16. The test
  checks the tighter bound 2 max |dz| computed from the measured features as well.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clipfit import data
from clipfit.backbone import load_backbone, text_mlp_output_projections
from clipfit.config import PRECISIONS, OptimConfig, RunConfig, validate
from clipfit.engine import predict_logits, train
from clipfit.methods import build_method
from clipfit.precision import apply_precision, autocast

TASK = "mini_textures"
UNIT_ROUNDOFF = {"fp32": 2.0**-24, "bf16": 2.0**-8, "fp16": 2.0**-11, "fp16-reference": 2.0**-11}
FEATURE_BUDGET = 2.0  # in units of u, per unit feature (measured <= 1.23)
FP32_LOSS_TOL = 1e-5
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def base_splits(tmp_path_factory):
    root: Path = tmp_path_factory.mktemp("mini-world")
    return data.subsample_classes(data.fewshot(data.load_dataset(TASK, root), 4, 1), "base")


def method_and_batch(splits, precision: str, regularizer: str = "kd", n: int = 8):
    backbone = load_backbone("mini-clip", "builtin")
    p = backbone.preprocess
    dataset = data.ImageDataset(splits.train, data.test_transform(p.image_size, p.mean, p.std))
    images = torch.stack([dataset[i][0] for i in range(n)])
    labels = torch.tensor([dataset[i][1] for i in range(n)])
    method = build_method(
        "clipfit", backbone, splits.classnames, splits.template, {"beta": 8.0, "regularizer": regularizer}
    )
    apply_precision(method, precision)
    with autocast(CPU, precision):  # as the engine computes the distillation target
        method.prepare_training()
    return method, images, labels


def first_step(splits, precision: str):
    """(parts of the first step's loss, float64 image features, class features, logit scale)."""
    method, images, labels = method_and_batch(splits, precision)
    with autocast(CPU, precision):
        parts = method.training_loss(images, labels).term_values()
        # With autograd on, as in the step (without it, attention may take another kernel: fp16 MHA's fast path).
        image = method.encode_images(images).detach().double()
        text = method.class_features().detach().double()
    return parts, image, text, method.backbone.logit_scale.item(), labels


@pytest.fixture(scope="module")
def fp32_step(base_splits):
    return first_step(base_splits, "fp32")


def test_the_precisions_are_fp32_bf16_fp16_with_loss_scaling_and_the_references_fp16_weights():
    assert set(PRECISIONS) == {"fp32", "bf16", "fp16", "fp16-reference"}
    assert PRECISIONS["fp16"].loss_scaling and not PRECISIONS["bf16"].loss_scaling
    assert PRECISIONS["fp16-reference"].weights_fp16 and PRECISIONS["fp16-reference"].autocast_dtype is None
    for name in PRECISIONS:
        validate(RunConfig(precision=name))


@pytest.mark.parametrize("precision", list(UNIT_ROUNDOFF))
def test_distillation_term_and_its_gradient_are_zero_at_the_first_step_in_every_precision(base_splits, precision):
    method, _, _ = method_and_batch(base_splits, precision)
    with autocast(CPU, precision):
        reg = method.regularization(method.class_features())
    assert reg.dtype == torch.float32
    assert reg.item() == 0.0
    reg.backward()
    for p in method.text_biases.values():
        assert p.grad is not None and not p.grad.any()


@pytest.mark.parametrize("precision", list(UNIT_ROUNDOFF))
def test_cross_entropy_is_computed_in_fp32_from_the_features_the_precision_gives(base_splits, precision):
    parts, image, text, scale, labels = first_step(base_splits, precision)
    expected = F.cross_entropy(scale * image @ text.t(), labels).item()
    assert parts["ce"] == pytest.approx(expected, abs=FP32_LOSS_TOL)


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp16-reference"])
def test_first_step_loss_terms_equal_fp32_within_the_derived_tolerance(base_splits, fp32_step, precision):
    parts, image, text, scale, _ = first_step(base_splits, precision)
    parts32, image32, text32, scale32, _ = fp32_step
    u = UNIT_ROUNDOFF[precision]
    image_error = (image - image32).norm(dim=-1).max().item()
    text_error = (text - text32).norm(dim=-1).max().item()
    assert image_error <= FEATURE_BUDGET * u and text_error <= FEATURE_BUDGET * u
    logit_error = (scale * image @ text.t() - scale32 * image32 @ text32.t()).abs().max().item()
    assert logit_error <= scale * (image_error + text_error) + FP32_LOSS_TOL
    assert abs(parts["ce"] - parts32["ce"]) <= 2 * logit_error + 2 * FP32_LOSS_TOL
    assert abs(parts["ce"] - parts32["ce"]) <= 2 * scale * 2 * FEATURE_BUDGET * u
    assert parts["kd"] == parts32["kd"] == 0.0


# fp16 and bf16 matmuls are slow on a CPU: the cases marked slow took 12-22 s each there.
@pytest.mark.parametrize(
    "precision,regularizer",
    [
        ("fp32", "kd"),
        ("bf16", "kd"),
        pytest.param("fp16", "kd", marks=pytest.mark.slow),
        pytest.param("fp16-reference", "kd", marks=pytest.mark.slow),
        pytest.param("bf16", "bias-mse", marks=pytest.mark.slow),
    ],
)
def test_no_loss_term_is_ever_negative_in_training(base_splits, precision, regularizer):
    method, _, _ = method_and_batch(base_splits, precision, regularizer)
    p = method.backbone.preprocess
    dataset = data.ImageDataset(base_splits.train[:8], data.train_transform(p.image_size, p.mean, p.std))
    steps = []
    inner = method.training_loss

    def recorded(images, labels):
        loss = inner(images, labels)
        steps.append({"loss": loss.total.item(), **loss.term_values()})
        return loss

    method.training_loss = recorded
    history = train(
        method,
        dataset,
        OptimConfig(epochs=3, batch_size=4, warmup_epochs=0, lr=0.05),
        seed=1,
        progress=False,
        precision=precision,
    )
    assert len(steps) == 6 and len(history) == 3
    for record in steps + history:
        for key in ("loss", "ce", regularizer):
            assert record[key] >= 0.0, (key, record)
    assert steps[0][regularizer] == 0.0
    assert any(step[regularizer] > 0.0 for step in steps[1:])  # the weights did move


def test_fp16_scales_the_loss_with_a_grad_scaler(base_splits, monkeypatch):
    scaled = []

    class Recording(torch.amp.GradScaler):
        def scale(self, outputs):
            scaled.append(outputs.item())
            return super().scale(outputs)

    monkeypatch.setattr(torch.amp, "GradScaler", Recording)
    method, _, _ = method_and_batch(base_splits, "fp16")
    p = method.backbone.preprocess
    dataset = data.ImageDataset(base_splits.train[:4], data.test_transform(p.image_size, p.mean, p.std))
    train(
        method, dataset, OptimConfig(epochs=1, batch_size=4, warmup_epochs=0), seed=1, progress=False, precision="fp16"
    )
    assert len(scaled) == 1
    assert all(p.dtype == torch.float32 for p in method.trainable_parameters().values())


def test_fp16_reference_holds_the_clip_in_fp16_and_trains_the_text_biases_in_fp16(base_splits):
    method, _, _ = method_and_batch(base_splits, "fp16-reference")
    clip = method.clip
    linears = text_mlp_output_projections(clip)
    assert all(linear.weight.dtype == torch.float16 and linear.bias.dtype == torch.float16 for linear in linears)
    # LayerNorms stay fp32, as in OpenAI's CLIP.
    assert all(p.dtype == torch.float32 for p in method.image_norms.values())
    assert clip.logit_scale.dtype == torch.float32
    p = method.backbone.preprocess
    dataset = data.ImageDataset(base_splits.train[:4], data.test_transform(p.image_size, p.mean, p.std))
    before = {name: t.detach().clone() for name, t in method.text_biases.items()}
    train(
        method,
        dataset,
        OptimConfig(epochs=1, batch_size=4, warmup_epochs=0, lr=0.05),
        seed=1,
        progress=False,
        precision="fp16-reference",
    )
    assert all(t.dtype == torch.float16 for t in method.text_biases.values())
    assert any(not torch.equal(before[name], t) for name, t in method.text_biases.items())
    logits, _ = predict_logits(method, dataset, progress=False, precision="fp16-reference")
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
