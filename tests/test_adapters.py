"""Rules of the methods on frozen image features: the feature cache, Tip-Adapter(-F), the linear probe,
CLIP-Adapter; one test each, on the tiny random-init CLIP."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clipfit import api, data
from clipfit.backbone import load_backbone
from clipfit.config import OptimConfig, RunConfig
from clipfit.engine import train
from clipfit.features import augmented_view, encode_views, feature_batches
from clipfit.methods import build_method
from clipfit.methods.linear_probe import C_SWEEP
from clipfit.methods.tip_adapter import TIP_SEARCH_STEPS

from conftest import CLASSNAMES, TINY_MODEL

TEMPLATE = "a photo of a {}."


def build(name, classnames=CLASSNAMES[:4], **options):
    torch.manual_seed(0)
    return build_method(name, load_backbone(TINY_MODEL, "none"), list(classnames), TEMPLATE, options)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    from conftest import make_coop_eurosat

    root = make_coop_eurosat(tmp_path_factory.mktemp("data"), per_split=(6, 3, 4))
    return data.load_dataset("eurosat", str(root))


def datasets(method, samples):
    p = method.backbone.preprocess
    augment = data.ImageDataset(samples, data.train_transform(p.image_size, p.mean, p.std))
    plain = data.ImageDataset(samples, data.test_transform(p.image_size, p.mean, p.std))
    return augment, plain


def test_the_feature_cache_holds_what_encoding_the_same_augmented_view_gives(splits):
    method = build("clip-adapter").eval()
    augment, _ = datasets(method, splits.train)
    features, labels = encode_views(method, augment, views=3, seed=7, batch_size=5)
    assert features.shape == (3, len(splits.train), method.clip.visual.output_dim)
    assert labels.tolist() == [s.label for s in splits.train]
    for view, index in [(0, 0), (2, 5), (1, len(splits.train) - 1)]:
        image, _ = augmented_view(augment, seed=7, view=view, index=index)
        with torch.no_grad():
            direct = method.encode_images(image[None])[0]
        torch.testing.assert_close(features[view, index], direct, rtol=1e-5, atol=1e-6)
    # The views are different crops, and a view does not depend on the batch size it was encoded in.
    assert not torch.allclose(features[0], features[1])
    again, _ = encode_views(method, augment, views=3, seed=7, batch_size=2)
    torch.testing.assert_close(again, features, rtol=1e-5, atol=1e-6)


def test_feature_batches_draw_each_image_once_per_epoch_with_one_of_its_views():
    views, n = 4, 10
    features = torch.arange(views * n, dtype=torch.float32).reshape(views, n, 1)  # value = view * n + image
    labels = torch.arange(n)
    seen = []
    for batch, batch_labels in feature_batches(features, labels, 3, torch.Generator().manual_seed(0)):
        image = batch[:, 0].long() % n
        assert torch.equal(image, batch_labels)
        seen += image.tolist()
    assert len(seen) == 9 and len(set(seen)) == 9  # 3 whole batches of 3, the last partial one dropped


def test_tip_adapter_with_alpha_0_is_zero_shot_clip_exactly(splits):
    tip = build("tip-adapter", alpha=0.0, search=False)
    augment, _ = datasets(tip, splits.train)
    train(tip, augment, OptimConfig(batch_size=8), seed=1, progress=False)
    assert tip.cache_keys.shape == (len(splits.train), tip.clip.visual.output_dim)
    zeroshot = build_method("zeroshot", tip.backbone, tip.classnames, TEMPLATE)
    images = torch.stack([augment[i][0] for i in range(4)])
    with torch.no_grad():
        assert torch.equal(tip.logits(images, tip.classifier()), zeroshot.logits(images, zeroshot.classifier()))
        tip.alpha.fill_(1.0)  # the cache then moves the logits
        assert not torch.equal(tip.logits(images, tip.classifier()), zeroshot.logits(images, zeroshot.classifier()))


def test_tip_adapter_cache_keys_are_the_renormalised_mean_of_the_views(splits):
    tip = build("tip-adapter", search=False, views=3)
    augment, _ = datasets(tip, splits.train)
    train(tip, augment, OptimConfig(batch_size=8), seed=4, progress=False)
    features, _ = encode_views(tip, augment, views=3, seed=4, batch_size=8)
    expected = torch.nn.functional.normalize(features.mean(dim=0), dim=-1)
    torch.testing.assert_close(tip.cache_keys, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(tip.cache_values.argmax(dim=1), torch.tensor([s.label for s in splits.train]))


def test_tip_adapter_search_picks_the_best_alpha_and_beta_on_validation(splits):
    tip = build("tip-adapter", beta_max=7.0, alpha_max=3.0, views=2)
    augment, plain = datasets(tip, splits.train)
    _, val = datasets(tip, splits.val)
    history = train(tip, augment, OptimConfig(batch_size=8), seed=1, progress=False, val_dataset=val)
    chosen = history[0]
    features, labels = encode_views(tip, val, views=0, seed=1, batch_size=8)
    f = torch.nn.functional.normalize(features[0], dim=-1)
    with torch.no_grad():
        clip_logits = tip.backbone.logit_scale * f @ tip.class_features().t()
        affinity = f @ tip.cache_keys.t()

        def accuracy(alpha, beta):
            logits = tip.tip_logits(clip_logits, affinity, alpha, beta)
            return 100.0 * (logits.argmax(-1) == labels).float().mean().item()

        betas = [0.1 + i * (7.0 - 0.1) / TIP_SEARCH_STEPS[0] for i in range(TIP_SEARCH_STEPS[0])]
        alphas = [0.1 + i * (3.0 - 0.1) / TIP_SEARCH_STEPS[1] for i in range(TIP_SEARCH_STEPS[1])]
        best = max(accuracy(a, b) for b in betas[::7] for a in alphas[::3])
    assert chosen["val_accuracy"] == pytest.approx(accuracy(chosen["alpha"], chosen["beta"]))
    assert chosen["val_accuracy"] >= best
    assert (float(tip.alpha), float(tip.beta)) == pytest.approx((chosen["alpha"], chosen["beta"]))


def test_tip_adapter_f_trains_the_keys_from_the_cache_and_searches_after(splits):
    tip = build("tip-adapter-f", views=2)
    augment, _ = datasets(tip, splits.train)
    _, val = datasets(tip, splits.val)
    optim = OptimConfig(epochs=3, batch_size=8, lr=0.01, optimizer="adamw", schedule="cosine-iterations",
                        warmup_epochs=0)
    history = train(tip, augment, optim, seed=1, progress=False, val_dataset=val)
    features, _ = encode_views(tip, augment, views=2, seed=1, batch_size=8)
    initial = torch.nn.functional.normalize(features.mean(dim=0), dim=-1)
    assert set(tip.trainable_parameters()) == {"method.cache_keys"}
    assert tip.cache_keys.shape == initial.shape and not torch.allclose(tip.cache_keys, initial)
    assert history[0]["cache"] == len(splits.train) and history[-1]["epoch"] == "after" and "alpha" in history[-1]


def test_the_linear_probes_chosen_regularisation_is_the_best_on_validation(splits):
    probe = build("linear-probe")
    _, plain = datasets(probe, splits.train)
    _, val = datasets(probe, splits.val)
    history = train(probe, plain, OptimConfig(batch_size=8), seed=1, progress=False, plain_dataset=plain,
                    val_dataset=val)
    x = encode_views(probe, plain, 0, 1, batch_size=8)
    v = encode_views(probe, val, 0, 1, batch_size=8)
    x, y = x[0][0].double().numpy(), x[1].numpy()
    val_x, val_y = v[0][0].double().numpy(), v[1].numpy()
    trials = probe.search_c(x, y, val_x, val_y)
    assert [c for c, *_ in trials[:len(C_SWEEP)]] == list(C_SWEEP) and len(trials) == len(C_SWEEP) + 16
    best = max(acc for _, acc, _ in trials)
    chosen = history[0]
    assert chosen["val_accuracy"] == pytest.approx(100.0 * best)
    # Independently refitted at the chosen C, the classifier scores that accuracy, and the probe's head
    # gives its predictions.
    clf = probe._fit_c(chosen["C"], x, y)
    assert (clf.predict(val_x) == val_y).mean() == pytest.approx(best)
    with torch.no_grad():
        head = probe.logits_from_features(torch.from_numpy(val_x).float(), None).argmax(-1).numpy()
    assert np.array_equal(head, clf.predict(val_x))


def test_clip_adapter_with_a_zero_bottleneck_is_zero_shot_clip(splits):
    adapter = build("clip-adapter")
    with torch.no_grad():
        for p in adapter.adapter.parameters():
            p.zero_()  # ReLU(0) = 0: the blend is 0.8 f, the same direction as f
    zeroshot = build_method("zeroshot", adapter.backbone, adapter.classnames, TEMPLATE)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(adapter.logits(images, adapter.classifier()),
                                   zeroshot.logits(images, zeroshot.classifier()))


@pytest.mark.parametrize("name", ["clip-adapter", "tip-adapter-f"])
def test_the_cached_views_mode_is_named_in_the_config_and_the_log(name, eurosat_root, tmp_path):
    config = RunConfig(method=name, model=TINY_MODEL, pretrained="none", dataset="eurosat", data_root=str(eurosat_root),
                       protocol="few-shot", shots=2, seeds=[1], optim=OptimConfig(epochs=2), out=str(tmp_path / "run"))
    api.run(config, progress=False, echo=False)
    seed = tmp_path / "run" / "seed1"
    options = json.loads((seed / "config.json").read_text())["method_options"]
    assert options["augmentation"] == "cached-views" and options["views"] == 10
    log = (seed / "log.txt").read_text()
    assert "8 training images x 10 augmented views encoded once" in log and "APPROXIMATE" in log


def test_clip_adapter_ln_cannot_cache_features():
    with pytest.raises(Exception, match="augmentation=fresh"):
        build("clip-adapter", layernorm=True)
    method = build("clip-adapter+ln")
    assert method.regime.optimise == "images" and method.regime.views is None and method.image_tower_trains


@pytest.mark.parametrize(
    "name, options", [("linear-probe", {}), ("tip-adapter", {}), ("clip-adapter", {"type": "vision"})]
)
def test_a_classifier_of_the_training_classes_refuses_other_classes(name, options):
    method = build(name, **options)
    method.set_classes(list(CLASSNAMES[:4]))  # its own classes: fine
    with pytest.raises(Exception, match=f"method '{name}'.* classifies only the 4 classes it was trained on"):
        method.set_classes(list(CLASSNAMES[2:6]))
    build("clip-adapter").set_classes(list(CLASSNAMES[2:6]))  # the class prompts name any class
