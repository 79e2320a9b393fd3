"""CLIPFit against the official implementation's own numbers, stored in `tests/data/`.

How the data was made (2026-11-30): the official CLIPFit code (minglllli/CLIPFit at commit 4dde049,
its `trainers/ClipFit.py` `CustomCLIP` and `clip/model.py`) was run on CPU in fp32 by a script that
builds that `CustomCLIP` unchanged (`.cuda()` made the identity) on other base weights: an OpenAI-layout
ViT-B/32 filled by `reference_clip.random_openai_state_dict(seed=0)`, which this test rebuilds bit for
bit. The script moves the 64 trainable tensors away from their pretrained values (the stored `tuned/*`),
runs one batch of 8 images (`torch.manual_seed(1); torch.randn(8, 3, 224, 224)`, labels stored) against
the 10 EuroSAT-style prompts with beta 8, and stores the logits, CE, distillation term, total loss and
the gradient of every trainable tensor (`grad/*`). Only those numbers are committed, never the code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clipfit.backbone import load_backbone
from clipfit.methods import build_method

from reference_clip import random_openai_state_dict

pytestmark = pytest.mark.reference

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def reference():
    meta = json.loads((DATA / "clipfit_reference_vitb32.json").read_text())
    return meta, load_file(str(DATA / "clipfit_reference_vitb32.safetensors"))


@pytest.fixture(scope="module")
def ours(reference):
    """Our CLIPFit on the same weights, tuned values and batch: (method, loss, parts, logits)."""
    meta, tensors = reference
    backbone = load_backbone("ViT-B-32-quickgelu", "none")
    model = backbone.model
    model.load_state_dict(random_openai_state_dict({k: v.shape for k, v in model.state_dict().items()}, seed=0))
    method = build_method("clipfit", backbone, meta["classnames"], meta["template"], {"beta": meta["beta"]})
    tuned = {name[len("tuned/"):]: t for name, t in tensors.items() if name.startswith("tuned/")}
    with torch.no_grad():
        for name, p in method.trainable_parameters().items():
            p.copy_(tuned[name])
    method.prepare_training()  # the distillation target comes from the pretrained values, not the tuned ones
    torch.manual_seed(1)
    images = torch.randn(8, 3, 224, 224)
    loss = method.training_loss(images, tensors["labels"])
    parts, loss = loss.term_values(), loss.total
    loss.backward()
    with torch.no_grad():
        logits = method.logits(images, method.class_features())
    return method, loss.item(), parts, logits


def test_the_same_64_tensors_train(reference, ours):
    meta, tensors = reference
    method = ours[0]
    expected = {name[len("grad/"):] for name in tensors if name.startswith("grad/")}
    assert len(expected) == 64
    assert set(method.trainable_parameters()) == expected
    assert sum(p.numel() for p in method.trainable_parameters().values()) == meta["n_trainable"] == 46_080


def test_logits_ce_distillation_term_and_loss_equal_the_reference(reference, ours):
    meta, tensors = reference
    _, loss, parts, logits = ours
    torch.testing.assert_close(logits, tensors["logits"], rtol=1e-5, atol=1e-4)
    assert parts["ce"] == pytest.approx(meta["ce"], rel=1e-5)
    assert parts["kd"] == pytest.approx(meta["kd"], rel=1e-4)
    assert loss == pytest.approx(meta["loss"], rel=1e-5)


def test_every_gradient_equals_the_reference(reference, ours):
    _, tensors = reference
    method = ours[0]
    for name, p in method.trainable_parameters().items():
        expected = tensors[f"grad/{name}"]
        assert expected.abs().max() > 0, name
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item(), msg=name)
