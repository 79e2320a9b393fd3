"""VPT-shallow and VPT-deep (the PEFT-for-CLIP study's visual prompt tuning), one rule per test, on the
tiny random-init CLIP (image tower: width 32, 2 blocks, 8 x 8 patches on 32 x 32 images, 16 patches)."""

from __future__ import annotations

import math

import pytest
import torch

from clipfit import api
from clipfit.backbone import encode_image_vpt
from clipfit.config import OptimConfig, RunConfig
from clipfit.engine import train
from clipfit.errors import ClipFitError
from clipfit.methods import get_method
from clipfit.runner import resolve

from conftest import TINY_MODEL
from test_methods import build, colour_batch

WIDTH, BLOCKS, PATCHES = 32, 2, 16


def projected(method, block: int) -> torch.Tensor:
    """The study's prompt at ``block`` after its projection (no dropout: eval mode), computed by hand."""
    proj = method.prompt_proj
    return method.prompt_embeddings[block] @ proj.weight.t() + proj.bias


def block_inputs_and_outputs(method, images):
    """What every image-tower block receives and returns during one forward of the method."""
    inputs, outputs, handles = [], [], []
    for block in method.clip.visual.transformer.resblocks:
        handles.append(block.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach().clone())))
        handles.append(block.register_forward_hook(lambda m, args, out: outputs.append(out.detach().clone())))
    try:
        with torch.no_grad():
            method.encode_images(images)
    finally:
        for handle in handles:
            handle.remove()
    return inputs, outputs


def test_vpt_deep_each_block_receives_its_own_projected_prompts_right_after_the_class_token():
    n = 3
    method = build("vpt-deep", num_tokens=n).eval()
    assert method.prompt_embeddings.shape == (BLOCKS, n, WIDTH)
    images, _ = colour_batch(n=2)
    inputs, outputs = block_inputs_and_outputs(method, images)
    assert [x.shape for x in inputs] == [(2, 1 + n + PATCHES, WIDTH)] * BLOCKS
    with torch.no_grad():
        # Block 0: [class token, prompts, patches]; the class token and patches are open_clip's own
        # embedding (positional embedding and ln_pre), the prompts have neither.
        embedded = method.clip.visual._embeds(images)
        for i in range(BLOCKS):
            for image in range(2):
                torch.testing.assert_close(inputs[i][image, 1:1 + n], projected(method, i), rtol=0, atol=1e-6)
        torch.testing.assert_close(inputs[0][:, :1], embedded[:, :1], rtol=0, atol=0)
        torch.testing.assert_close(inputs[0][:, 1 + n:], embedded[:, 1:], rtol=0, atol=0)
        # Block i >= 1: only positions 1..N are replaced; the class token and patches come from block i-1.
        for i in range(1, BLOCKS):
            torch.testing.assert_close(inputs[i][:, :1], outputs[i - 1][:, :1], rtol=0, atol=0)
            torch.testing.assert_close(inputs[i][:, 1 + n:], outputs[i - 1][:, 1 + n:], rtol=0, atol=0)
            assert not torch.allclose(outputs[i - 1][:, 1:1 + n], inputs[i][:, 1:1 + n])  # really replaced


def test_vpt_shallow_carries_the_input_prompts_through_every_block():
    n = 4
    method = build("vpt-shallow", num_tokens=n).eval()
    assert method.prompt_embeddings.shape == (1, n, WIDTH)
    images, _ = colour_batch(n=2)
    inputs, outputs = block_inputs_and_outputs(method, images)
    with torch.no_grad():
        torch.testing.assert_close(inputs[0][0, 1:1 + n], projected(method, 0), rtol=0, atol=1e-6)
    torch.testing.assert_close(inputs[1], outputs[0], rtol=0, atol=0)  # nothing replaced before block 1


def test_vpt_shallow_feature_is_clips_forward_over_the_prompted_sequence():
    method = build("vpt-shallow", num_tokens=5).eval()
    visual = method.clip.visual
    images, _ = colour_batch(n=3)
    with torch.no_grad():
        prompts = projected(method, 0)
        # By hand: open_clip's embedding, the prompts after the class token, open_clip's transformer, the
        # class token through ln_post and the projection.
        embedded = visual._embeds(images)
        sequence = torch.cat([embedded[:, :1], prompts.expand(3, -1, -1), embedded[:, 1:]], dim=1)
        expected = visual.ln_post(visual.transformer(sequence)[:, 0]) @ visual.proj
        features = method.encode_images(images)
        plain = method.clip.encode_image(images)
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-6)
    assert (features - plain).abs().max() > 1e-2  # the prompts move the feature


def test_without_prompt_tokens_the_forward_is_open_clips_encode_image():
    method = build("vpt-shallow")
    images, _ = colour_batch(n=3)
    with torch.no_grad():
        none = torch.empty(0, WIDTH)
        torch.testing.assert_close(encode_image_vpt(method.clip, images, [none]), method.clip.encode_image(images),
                                   rtol=0, atol=1e-6)
        torch.testing.assert_close(encode_image_vpt(method.clip, images, [none, none]),
                                   method.clip.encode_image(images), rtol=0, atol=1e-6)


def test_prompts_and_projection_are_initialised_as_the_study():
    method = build("vpt-deep", num_tokens=50)
    bound = math.sqrt(6.0 / (3 * 8 * 8 + WIDTH))  # 0.1637 here; 0.0625 on ViT-B/16 (3 * 16 * 16 + 768)
    prompts = method.prompt_embeddings.detach()
    assert prompts.abs().max() <= bound
    assert prompts.abs().max() > 0.95 * bound  # 3,200 uniform draws reach the edge
    assert prompts.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    # Kaiming-normal with fan_out = 32 outputs: std sqrt(2 / 32) = 0.25 (PyTorch's default would be ~0.10).
    assert method.prompt_proj.weight.std().item() == pytest.approx(0.25, rel=0.1)
    assert method.config.dropout == 0.1 and method.config.type == "vision"


def _train_briefly(method):
    images, labels = colour_batch()
    optim = OptimConfig(epochs=3, batch_size=6, lr=0.05, warmup_epochs=0)
    train(method, torch.utils.data.TensorDataset(images, labels), optim, seed=1, progress=False)


@pytest.mark.parametrize("name", ["vpt-shallow", "vpt-deep"])
def test_train_prompts_false_is_the_studys_code_where_only_the_projection_and_head_train(name):
    method = build(name, train_prompts=False)
    prompts, weight = method.prompt_embeddings.detach().clone(), method.prompt_proj.weight.detach().clone()
    assert "method.prompt_embeddings" not in method.trainable_parameters()
    assert "method.prompt_embeddings" in method.adapter_state()  # its random init is part of the model
    assert set(method.parameter_groups()) == {"prompt projection", "linear head"}
    _train_briefly(method)
    assert torch.equal(method.prompt_embeddings.detach(), prompts)
    assert (method.prompt_proj.weight.detach() - weight).abs().max() > 1e-4


@pytest.mark.parametrize("name", ["vpt-shallow", "vpt-deep"])
def test_by_default_the_prompts_train_as_vpt_intends(name):
    method = build(name)
    prompts, weight = method.prompt_embeddings.detach().clone(), method.prompt_proj.weight.detach().clone()
    assert "method.prompt_embeddings" in method.trainable_parameters()
    _train_briefly(method)
    assert (method.prompt_embeddings.detach() - prompts).abs().max() > 1e-4
    assert (method.prompt_proj.weight.detach() - weight).abs().max() > 1e-4


@pytest.mark.parametrize("name", ["vpt-shallow", "vpt-deep"])
def test_type_vision_refuses_base_to_new_up_front(name, eurosat_root):
    config = RunConfig(method=name, model=TINY_MODEL, pretrained="none", dataset="eurosat", data_root=str(eurosat_root),
                       protocol="base2new")
    with pytest.raises(ClipFitError, match=f"{name}.*cannot classify classes it did not train on"):
        resolve(config)
    with pytest.raises(ClipFitError, match="type=vision classifies only the 2 classes"):
        build(name, classnames=["a", "b"]).set_classes(["c", "d"])


@pytest.mark.parametrize("name", ["vpt-shallow", "vpt-deep"])
def test_type_vision_language_runs_base_to_new(name, eurosat_root, tmp_path):
    config = RunConfig(method=name, model=TINY_MODEL, pretrained="none", dataset="eurosat",
                       data_root=str(eurosat_root), protocol="base2new", shots=4, seeds=[1],
                       method_options={"type": "vision-language", "num_tokens": 2},
                       optim=OptimConfig(epochs=2, batch_size=4, lr=0.01), out=str(tmp_path / "run"))
    summary = api.run(config, progress=False, echo=False)
    (seed,) = summary["per_seed"]
    assert seed["base_n"] == 2 * 4 and seed["new_n"] == 2 * 4  # 2 of the 4 classes each, 4 test images per class
    assert all(math.isfinite(seed[key]) for key in ("base", "new", "hm"))


def test_recipe_is_the_studys_per_task_config_else_its_defaults():
    shallow, deep = get_method("vpt-shallow"), get_method("vpt-deep")
    constant_sgd = {"optimizer": "sgd", "schedule": "constant", "momentum": 0.9, "warmup_epochs": 0, "batch_size": 32}
    # configs/VPT-CLIP-Shallow/eurosat.yaml: N 100, lr 10, wd 1e-4, TOTAL_EPOCH 5 (+ WARMUP_EPOCH 5 at the same lr).
    assert shallow.optim_defaults("few-shot", "eurosat") == {
        **constant_sgd, "lr": 10.0, "weight_decay": 1e-4, "epochs": 10
    }
    assert shallow.protocol_defaults("few-shot", "eurosat") == {"num_tokens": 100}
    # configs/VPT-CLIP-Deep/eurosat.yaml: N 100, lr 10, TOTAL_EPOCH 30; caltech101.yaml: N 10, lr 1, 3 epochs.
    assert deep.optim_defaults("few-shot", "eurosat")["epochs"] == 35
    assert deep.optim_defaults("few-shot", "caltech101") == {
        **constant_sgd, "lr": 1.0, "weight_decay": 1e-4, "epochs": 8
    }
    assert deep.protocol_defaults("base2new", "caltech101") == {"num_tokens": 10}
    assert shallow.protocol_defaults("few-shot", "caltech101") == {"num_tokens": 100}
    # flowers.yaml names no NUM_TOKENS (config.py's 5); oxford_pet.yaml 1 token; sun397 deep lr 1, shallow 10.
    assert shallow.protocol_defaults("few-shot", "oxford_flowers") == {"num_tokens": 5}
    assert deep.protocol_defaults("few-shot", "oxford_pets") == {"num_tokens": 1}
    assert shallow.optim_defaults("few-shot", "sun397")["lr"] == 10.0
    assert deep.optim_defaults("few-shot", "sun397")["lr"] == 1.0
    assert shallow.optim_defaults("few-shot", "dtd")["epochs"] == 10
    # Any other dataset: src/configs/config.py (NUM_TOKENS 5, BASE_LR 0.01, WEIGHT_DECAY 1e-4, 5 + 30 epochs).
    for dataset in ("imagenet", "food101", "mini_colors"):
        assert deep.optim_defaults("few-shot", dataset) == {
            **constant_sgd, "lr": 0.01, "weight_decay": 1e-4, "epochs": 35
        }
        assert shallow.protocol_defaults("few-shot", dataset) == {"num_tokens": 5}


def test_a_resnet_image_tower_is_refused():
    with pytest.raises(ClipFitError, match="visual prompts need an open_clip VisionTransformer"):
        api.count_parameters("vpt-shallow", "RN50")


def test_vit_b16_counts_per_group():
    groups = api.count_parameters("vpt-deep", "ViT-B-16")["groups"]
    assert groups == {"prompts": 12 * 5 * 768, "prompt projection": 768 * 768 + 768, "linear head": 512 + 1}
