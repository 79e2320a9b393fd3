"""CLIPFit, rule by rule: what trains, the loss, and the adapter file."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F

from clipfit import data
from clipfit.adapter import AdapterInfo, read_adapter, save_adapter
from clipfit.backbone import load_backbone
from clipfit.config import OptimConfig
from clipfit.engine import predict_logits, train
from clipfit.methods import build_method

from conftest import TINY_MODEL

TEMPLATE = "a centered satellite photo of {}."


def tiny_clipfit(classnames, **options):
    return build_method("clipfit", load_backbone(TINY_MODEL, "none"), classnames, TEMPLATE, {"beta": 8.0, **options})


def train_set(root, method):
    splits = data.load_dataset("eurosat", root)
    p = method.backbone.preprocess
    return splits, data.ImageDataset(splits.train, data.test_transform(p.image_size, p.mean, p.std))


def test_loss_is_cross_entropy_plus_beta_times_one_minus_mean_cosine_to_pretrained_text_features():
    classnames = ["forest", "river", "highway"]
    method = tiny_clipfit(classnames, beta=3.0)
    method.prepare_training()
    clip = method.clip
    tokens = open_clip.get_tokenizer(TINY_MODEL)([TEMPLATE.format(c) for c in classnames])
    with torch.no_grad():
        pretrained = clip.encode_text(tokens)
        for p in method.trainable_parameters().values():
            p.add_(0.05 * torch.randn_like(p))
    images, labels = torch.randn(5, 3, 32, 32), torch.tensor([0, 1, 2, 1, 0])

    loss = method.training_loss(images, labels)
    parts = loss.term_values()

    with torch.no_grad():
        img = clip.encode_image(images)
        txt = clip.encode_text(tokens)
        img = img / img.norm(dim=-1, keepdim=True)
        txt_n = txt / txt.norm(dim=-1, keepdim=True)
        logits = clip.logit_scale.exp() * img @ txt_n.t()
        ce = -(logits.log_softmax(dim=-1)[torch.arange(5), labels]).mean()
        pre_n = pretrained / pretrained.norm(dim=-1, keepdim=True)
        kd = 1 - (txt_n * pre_n).sum(dim=-1).mean()
    assert kd > 1e-4, "the perturbation must move the text features for the check to mean anything"
    torch.testing.assert_close(loss.total.detach(), ce + 3.0 * kd, rtol=1e-5, atol=1e-6)
    assert parts["ce"] == pytest.approx(ce.item(), rel=1e-5)
    assert parts["kd"] == pytest.approx(kd.item(), rel=1e-4)


def test_bias_mse_regulariser_is_the_mean_squared_change_of_the_text_biases():
    method = tiny_clipfit(["a", "b"], regularizer="bias-mse", beta=2.0)
    method.prepare_training()
    with torch.no_grad():
        for p in method.text_biases.values():
            p.add_(0.1)
    parts = method.training_loss(torch.randn(2, 3, 32, 32), torch.tensor([0, 1])).term_values()
    assert parts["bias-mse"] == pytest.approx(0.01, rel=1e-4)


def test_training_lowers_the_loss_and_changes_only_the_selected_parameters(eurosat_root):
    splits = data.load_dataset("eurosat", eurosat_root)
    method = tiny_clipfit(splits.classnames)
    _, dataset = train_set(eurosat_root, method)
    before = {k: v.clone() for k, v in method.clip.state_dict().items()}
    selected = set(method.trainable_parameters())

    optim = OptimConfig(epochs=8, batch_size=8, lr=0.5, warmup_epochs=0)
    history = train(method, dataset, optim, seed=1, progress=False)

    assert history[-1]["loss"] < history[0]["loss"]
    after = method.clip.state_dict()
    for name, value in before.items():
        if name in selected:
            continue
        assert torch.equal(after[name], value), f"{name} is frozen but changed"
    changed = [name for name in selected if not torch.equal(after[name], before[name])]
    assert set(changed) == selected


def test_adapter_file_round_trips_to_identical_logits(eurosat_root, tmp_path):
    splits = data.load_dataset("eurosat", eurosat_root)
    method = tiny_clipfit(splits.classnames)
    _, dataset = train_set(eurosat_root, method)
    train(method, dataset, OptimConfig(epochs=2, batch_size=8, lr=0.5, warmup_epochs=0), seed=1, progress=False)
    info = AdapterInfo(TINY_MODEL, "none", "clipfit", {"beta": 8.0}, splits.classnames, TEMPLATE)
    save_adapter(tmp_path / "adapter.safetensors", method.adapter_state(), info)

    tensors, loaded_info = read_adapter(tmp_path / "adapter.safetensors")
    assert loaded_info == info
    rebuilt = build_method("clipfit", load_backbone(TINY_MODEL, "none"), loaded_info.classnames, loaded_info.template,
                           loaded_info.method_options)
    rebuilt.load_adapter_state(tensors)

    expected, _ = predict_logits(method, dataset, progress=False)
    actual, _ = predict_logits(rebuilt, dataset, progress=False)
    assert torch.equal(actual, expected)


def test_vit_b16_adapter_file_is_under_200_kb_and_names_the_base_weights(tmp_path):
    method = build_method("clipfit", load_backbone("ViT-B-16", "none"), ["cat", "dog"], "a photo of a {}.",
                          {"beta": 8.0})
    classnames = [f"class {i}" for i in range(100)]
    info = AdapterInfo("ViT-B-16", "openai", "clipfit", {"beta": 8.0}, classnames, "a photo of a {}.")
    path = tmp_path / "adapter.safetensors"
    save_adapter(path, method.adapter_state(), info)
    assert path.stat().st_size < 200_000
    tensors, loaded = read_adapter(path)
    assert sum(t.numel() for t in tensors.values()) == 46_080
    assert (loaded.model, loaded.pretrained) == ("ViT-B-16", "openai")


def test_adapter_for_another_backbone_is_refused(tmp_path):
    method = tiny_clipfit(["a", "b"])
    state = method.adapter_state()
    name = next(iter(state))
    state[name] = torch.zeros(7)
    with pytest.raises(Exception, match=f"{name}.*shape"):
        method.load_adapter_state(state)


def test_zero_shot_logits_are_scaled_cosine_similarities():
    method = build_method("zeroshot", load_backbone(TINY_MODEL, "none"), ["cat", "dog"], "a photo of a {}.")
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits = method.logits(images, method.class_features())
        img = F.normalize(method.clip.encode_image(images), dim=-1)
        txt = F.normalize(method.clip.encode_text(method.prompt_tokens), dim=-1)
    torch.testing.assert_close(logits, method.clip.logit_scale.exp() * img @ txt.t(), rtol=1e-5, atol=1e-5)
    assert method.trainable_parameters() == {}
