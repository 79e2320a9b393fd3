"""The method contract, for every registered method (parametrised over the registry, so a method is tested
the moment it is registered), then each method's own rules, one test each.

Contract: it builds on a tiny random-init CLIP; a short training lowers its loss; only its own tensors
change, every frozen tensor and buffer stays bit-identical and the frozen CLIP stays in eval mode; its
adapter file round-trips to identical logits through `load_adapter`, with nothing but the file; its
trainable count on the ViT-B/16 skeleton is the published one; base-to-new works, or fails up front.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from clipfit import api
from clipfit.adapter import AdapterInfo, save_adapter
from clipfit.backbone import load_backbone, weights_fingerprint
from clipfit.config import OptimConfig, RunConfig
from clipfit.engine import train
from clipfit.errors import ClipFitError
from clipfit.methods import METHODS, build_method, get_method
from clipfit.methods.base import Method, Regime
from clipfit.methods.registry import register_method
from clipfit.runner import load_adapter, resolve
from clipfit.text_encoding import PromptContext, encode_prompts, encode_with_context, text_tower_or_none

from conftest import CLASSNAMES, TINY_MODEL

TEMPLATE = "a photo of a {}."

# Trainable counts on ViT-B/16 with the base-to-new defaults, worked out by hand from the shapes
# (text width 512, 12 blocks each, image width 768) and, where the paper states one, equal to it:
# CLIPFit 46,080 (text MLP output biases 6,144 + image LayerNorms 39,936, as minglllli/CLIPFit @4dde049
# trains them; the paper says "nearly 46K"); CoOp 4 vectors 2,048 and 16 vectors 8,192, CoCoOp 35,360
# ("35k"), KgCoOp 2,048, MaPLe 3,555,072 ("3.55M"): CLIPFit's Table 7 (Li et al., EMNLP 2024) and the
# official `prompt_learner` shapes (KaiyangZhou/CoOp @ff61507, htyao89/KgCoOp @c43ccc3,
# muzairkhattak/multimodal-prompt-learning @69bce21); BitFit (a)-(d): Table 5's
# 0.17M, 67.6K, 30.7K, 6.1K.
TEXT_LN_BIASES = 12 * 2 * 512
TEXT_BLOCK_BIASES = 12 * (3 * 512 + 512 + 2048 + 512) + TEXT_LN_BIASES  # 67,584
IMAGE_BLOCK_BIASES = 12 * (3 * 768 + 768 + 3072 + 768 + 2 * 768)  # 101,376
IMAGE_LAYERNORMS = 2 * 768 + 12 * 4 * 768 + 2 * 768  # 39,936
EXPECTED_B16 = {
    "clipfit": 46_080,
    "bitfit-all": TEXT_BLOCK_BIASES + IMAGE_BLOCK_BIASES,  # 168,960 = 0.17M
    "bitfit-text": TEXT_BLOCK_BIASES,  # 67.6K
    "bitfit-text-mlp": 12 * (2048 + 512),  # 30,720 = 30.7K
    "bitfit-text-proj": 12 * 512,  # 6,144 = 6.1K
    "ln-only": IMAGE_LAYERNORMS,
    "clipfit-no-kd": 46_080,
    "clipfit-no-ln": 6_144,
    "coop": 2_048,
    "coop+ln": 2_048 + IMAGE_LAYERNORMS,
    "kgcoop": 2_048,
    "kgcoop+ln": 2_048 + IMAGE_LAYERNORMS,
    "prograd": 16 * 512,
    "cocoop": 4 * 512 + (512 * 32 + 32) + (32 * 512 + 512),  # 35,360
    "maple": 2 * 512 + (512 * 768 + 768) + 8 * (2 * 512) + 8 * (512 * 768 + 768),  # 3,555,072
    # VPT (N = 5, the study's config.py default; type vision, one class): prompts 5 x 768 per prompted
    # block (1 shallow, 12 deep) + projection 768 x 768 + 768 (590,592) + head 512 x 1 + 1.
    "vpt-shallow": 5 * 768 + (768 * 768 + 768) + 513,  # 594,945
    "vpt-deep": 12 * 5 * 768 + (768 * 768 + 768) + 513,  # 637,185
    "zeroshot": 0,
    # CLIP-LoRA: rank 2 on q, k, v of 12 blocks per tower, r * (in + out) each: image 12 x 3 x 2 x (768 + 768)
    # = 110,592, text 12 x 3 x 2 x (512 + 512) = 73,728 (MaxZanella/CLIP-LoRA @358f0d7 `loralib/utils.py`;
    # the repository publishes no count).
    "clip-lora": 12 * 3 * 2 * (768 + 768) + 12 * 3 * 2 * (512 + 512),  # 184,320
    # The linear probe's head on the 512-d projected feature, for the one class `count_parameters` builds
    # with (513 x C); CLIP-Adapter's bottleneck 512 -> 128 -> 512 without biases (gaopengcuhk/CLIP-Adapter
    # @08d07f8 `clip_adapter.py` `Adapter`, there hard-coded to 1024 inputs for RN50).
    "linear-probe": 513,
    "clip-adapter": 2 * 512 * 128,  # 131,072
    "clip-adapter+ln": 2 * 512 * 128 + IMAGE_LAYERNORMS,
    # Tip-Adapter trains nothing; Tip-Adapter-F's keys are N x K x 512, sized by the few-shot set (0 unfitted).
    "tip-adapter": 0,
    "tip-adapter-f": 0,
}
PUBLISHED_B16 = {"clipfit": 46_080, "coop": 2_048, "cocoop": 35_360, "kgcoop": 2_048, "maple": 3_555_072}
PUBLISHED_B16_ROUNDED = {
    "bitfit-all": "0.17M", "bitfit-text": "67.6K", "bitfit-text-mlp": "30.7K", "bitfit-text-proj": "6.1K"
}


def colour_batch(n: int = 12, classes: int = 4, size: int = 32, seed: int = 0):
    """Images whose class is their colour (learnable in a few steps by a tiny model), and labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    palette = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1], [1, -1, 1], [-1, 1, 1], [1, 1, 1]])
    colours = palette[labels]
    images = colours[:, :, None, None] + 0.3 * torch.randn(n, 3, size, size, generator=g)
    return images, labels


def build(name: str, classnames=CLASSNAMES[:4], backbone=None, **options) -> Method:
    cls = get_method(name)
    torch.manual_seed(0)
    backbone = backbone or load_backbone(TINY_MODEL, "none")
    options = {**cls.protocol_defaults("base2new", "imagefolder"), **options}
    return build_method(name, backbone, list(classnames), TEMPLATE, options)


def save_tiny_adapter(method: Method, path) -> None:
    """The adapter file a run on the tiny random-init CLIP would write."""
    info = AdapterInfo(model=TINY_MODEL, pretrained="none", method=method.name,
                       method_options=dataclasses.asdict(method.config), classnames=method.classnames,
                       template=method.template, weights=weights_fingerprint(TINY_MODEL, "none"))
    save_adapter(path, method.adapter_state(), info)


def mean_loss(method: Method, images, labels) -> float:
    with torch.no_grad():
        return method.training_loss(images, labels).total.item()


# The contract's 30 steps at lr 0.005 move most methods' loss; CLIP-Adapter's bottleneck output enters at
# 0.2 through a ReLU, so on the tiny model its loss moves 0.002 there (0.15 at lr 0.5): it gets lr 0.5.
CONTRACT_LR = {"clip-adapter": 0.5, "clip-adapter+ln": 0.5}


@pytest.fixture(scope="module", params=list(METHODS))
def trained(request):
    """(method, its frozen state before training, loss before, loss after) after 30 steps on colour images."""
    name = request.param
    method = build(name)
    frozen_before = {k: v.clone() for k, v in method.clip.state_dict().items()}
    images, labels = colour_batch()
    method.prepare_training()
    before = mean_loss(method, images, labels) if method.regime.trains else None
    optim = OptimConfig(epochs=15, batch_size=6, lr=CONTRACT_LR.get(name, 0.005), warmup_epochs=0)
    train(method, torch.utils.data.TensorDataset(images, labels), optim, seed=1, progress=False)
    after = mean_loss(method, images, labels) if method.regime.trains else None
    return method, frozen_before, before, after


@pytest.mark.contract
def test_short_training_lowers_the_loss(trained):
    method, _, before, after = trained
    if not method.regime.trains:
        assert method.trainable_parameters() == {}
        return
    assert after < before - 0.01, f"{method.name}: loss {before:.4f} -> {after:.4f}"


@pytest.mark.contract
def test_only_its_own_tensors_change_and_the_frozen_clip_stays_in_eval_mode(trained):
    method, frozen_before, *_ = trained
    own = set(method.backbone_parameters())
    for key, value in method.clip.state_dict().items():
        if key in own:
            continue
        assert torch.equal(value, frozen_before[key]), f"{method.name}: frozen {key} changed"
    if method.regime.trains:
        changed = [k for k in own if not torch.equal(method.clip.state_dict()[k], frozen_before[k])]
        assert sorted(changed) == sorted(own), f"{method.name}: selected tensors that did not train"
    method.train()
    assert not any(m.training for m in method.clip.modules())
    assert all(m.training for name, m in method.named_modules() if name and not name.startswith("clip"))
    method.eval()


@pytest.mark.contract
def test_adapter_file_round_trips_to_identical_logits_through_load_adapter(trained, tmp_path):
    method, *_ = trained
    save_tiny_adapter(method, tmp_path / "adapter.safetensors")
    loaded = load_adapter(tmp_path / "adapter.safetensors")
    images, _ = colour_batch(seed=3)
    with torch.no_grad():
        ours = method.logits(images, method.classifier())
        theirs = loaded.logits(images, loaded.classifier())
    assert torch.equal(ours, theirs)
    assert all(not key.startswith("method.") or key.split(".", 1)[1] in dict(method.named_parameters()) or
               key.split(".", 1)[1] in dict(method.named_buffers()) for key in method.adapter_state())


@pytest.mark.contract
def test_adapter_keys_of_added_modules_cannot_collide_with_the_backbones(trained):
    method, *_ = trained
    backbone_keys = set(method.clip.state_dict())
    for key in method.adapter_state():
        assert (key in backbone_keys) != key.startswith("method."), key


@pytest.mark.contract
@pytest.mark.parametrize("name", list(METHODS))
def test_trainable_count_on_the_vit_b16_skeleton_is_the_published_one(name):
    assert name in EXPECTED_B16, f"add {name}'s ViT-B/16 count, worked out by hand, to EXPECTED_B16"
    count = sum(api.count_parameters(name, "ViT-B-16")["groups"].values())
    assert count == EXPECTED_B16[name]
    if name in PUBLISHED_B16:
        assert count == PUBLISHED_B16[name]
    if name in PUBLISHED_B16_ROUNDED:
        text = PUBLISHED_B16_ROUNDED[name]
        value, unit = float(text[:-1]), {"K": 1e3, "M": 1e6}[text[-1]]
        decimals = len(text[:-1].split(".")[1])
        assert round(count / unit, decimals) == value


def test_coop_has_16_context_vectors_for_few_shot_and_4_for_base_to_new():
    assert sum(api.count_parameters("coop", "ViT-B-16", "few-shot")["groups"].values()) == 8_192
    assert sum(api.count_parameters("coop", "ViT-B-16", "base2new")["groups"].values()) == 2_048


@pytest.mark.contract
@pytest.mark.parametrize("name", list(METHODS))
def test_base_to_new_classifies_new_classes_or_is_refused_up_front(name, eurosat_root):
    config = RunConfig(method=name, model=TINY_MODEL, pretrained="none", dataset="eurosat", data_root=str(eurosat_root),
                       protocol="base2new")
    if not get_method(name).classifies_unseen_classes:
        with pytest.raises(ClipFitError, match="cannot classify classes it did not train on"):
            resolve(config)
        return
    resolve(config)
    method = build(name, classnames=CLASSNAMES[:2])
    method.set_classes(CLASSNAMES[2:5])  # classes it never saw
    images, _ = colour_batch(n=4)
    with torch.no_grad():
        assert method.logits(images, method.classifier()).shape == (4, 3)


def test_a_method_that_cannot_classify_new_classes_is_refused_for_base_to_new(eurosat_root):
    class LinearHead(Method):
        name = "test-linear-head"
        classifies_unseen_classes = False

    register_method(LinearHead)
    try:
        config = RunConfig(method="test-linear-head", model=TINY_MODEL, pretrained="none", dataset="eurosat",
                           data_root=str(eurosat_root), protocol="base2new")
        message = "test-linear-head.*cannot classify classes it did not train on.*few-shot"
        with pytest.raises(ClipFitError, match=message):
            resolve(config)
    finally:
        METHODS.unregister("test-linear-head")


def test_a_variant_fixes_its_options():
    with pytest.raises(ClipFitError, match="coop\\+ln.*fixes option layernorm = True"):
        build("coop+ln", layernorm=False)
    assert build("coop+ln").config.layernorm is True


# Method rules -------------------------------------------------------------------------------------------

def test_a_frozen_image_tower_runs_forward_only_in_training():
    method = build("coop")
    method.train()
    images, _ = colour_batch(n=2)
    assert not method.encode_images(images).requires_grad
    assert build("coop+ln").encode_images(images).requires_grad
    assert build("maple").encode_images(images).requires_grad


@pytest.mark.parametrize("n_ctx, ctx_init", [(4, "a photo of a"), (16, "")])
def test_learned_prefix_fast_path_equals_the_straightforward_computation_for_coop(n_ctx, ctx_init):
    names = ["cat", "golden retriever dog", "x", "sea or lake", "annual crop land", "forest", "permanent crop land"]
    method = build("coop", classnames=names, n_ctx=n_ctx, ctx_init=ctx_init)
    with torch.no_grad():
        method.prompt_learner.ctx.normal_(std=0.3)
    tower = text_tower_or_none(method.clip)
    images, labels = colour_batch(n=7, classes=7)
    results = []
    def straightforward():
        return F.normalize(encode_with_context(tower, method.prompt_tokens, method.context(), truncate=False), dim=-1)

    for encode in (method.class_features, straightforward):
        method.prompt_learner.ctx.grad = None
        features = encode()
        loss = F.cross_entropy(method.logits(images, features), labels)
        loss.backward()
        results.append((features.detach(), loss.item(), method.prompt_learner.ctx.grad.clone()))
    (fast, fast_loss, fast_grad), (full, full_loss, full_grad) = results
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
    assert fast_loss == pytest.approx(full_loss, rel=1e-6)
    torch.testing.assert_close(fast_grad, full_grad, rtol=1e-4, atol=1e-5 * full_grad.abs().max().item())


def test_learned_context_reaches_every_block_where_given():
    # MaPLe's deep text prompts: the fast path's per-block replacement equals the straightforward one.
    method = build("maple")
    tower = text_tower_or_none(method.clip)
    learner = method.prompt_learner
    context = PromptContext((learner.ctx, *learner.compound_prompts_text))
    fast = encode_prompts(method.clip, method.prompt_tokens, context=context)
    full = F.normalize(encode_with_context(tower, method.prompt_tokens, context, truncate=False), dim=-1)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
    without_deep = encode_prompts(method.clip, method.prompt_tokens, context=PromptContext((learner.ctx,)))
    assert not torch.allclose(fast, without_deep)


def test_cocoop_context_differs_per_image():
    method = build("cocoop")
    images, _ = colour_batch(n=2)
    features = method.encode_images(images)
    bias = method.prompt_learner.meta_net(features)
    assert not torch.allclose(bias[0], bias[1])
    per_image = method.image_class_features(features)
    assert per_image.shape == (2, 4, features.shape[1])
    assert not torch.allclose(per_image[0], per_image[1])
    # Each image's logits are its own features against its own class features.
    logits = method.logits_from_features(features, None)
    torch.testing.assert_close(logits[1], method.backbone.logit_scale * per_image[1] @ features[1])


def test_kgcoop_with_lambda_0_equals_coop():
    images, labels = colour_batch()
    results = []
    for name, options in (("kgcoop", {"w": 0.0}), ("coop", {"ctx_init": "a photo of a"})):
        method = build(name, **options)
        with torch.no_grad():
            ctx = method.prompt_learner.ctx
            ctx.add_(0.1 * torch.randn(ctx.shape, generator=torch.Generator().manual_seed(5)))
        method.prepare_training()
        loss = method.training_loss(images, labels)
        method.backward(loss, lambda x: x)
        results.append((loss.total.item(), method.prompt_learner.ctx.grad.clone()))
    assert results[0][0] == results[1][0]
    assert torch.equal(results[0][1], results[1][1])


def test_kgcoop_distance_is_1_minus_mean_cosine_to_the_hand_crafted_features():
    method = build("kgcoop")
    with torch.no_grad():
        method.prompt_learner.ctx.add_(0.5)
    method.prepare_training()
    images, labels = colour_batch()
    parts = method.training_loss(images, labels).term_values()
    with torch.no_grad():
        cos = F.cosine_similarity(method.class_features().double(), method.handcrafted_features.double(), dim=-1)
    assert parts["kg"] == pytest.approx(1 - cos.mean().item(), rel=1e-5)


def _prograd_gradients(method, images, labels):
    params = list(method.trainable_parameters().values())
    loss = method.training_loss(images, labels)
    g_kd = torch.autograd.grad(loss.terms["kd"], params, retain_graph=True)[0]
    g_ce = torch.autograd.grad(loss.total, params)[0]
    loss = method.training_loss(images, labels)
    params[0].grad = None
    method.backward(loss, lambda x: x)
    return g_ce, g_kd, params[0].grad


def test_prograd_applied_gradient_never_opposes_the_zero_shot_direction():
    images, labels = colour_batch()
    method = build("prograd", lam=1.0)
    method.prepare_training()
    conflicts = 0
    for seed in range(12):
        with torch.no_grad():
            method.prompt_learner.ctx.normal_(std=0.5, generator=torch.Generator().manual_seed(seed))
        g_ce, g_kd, applied = _prograd_gradients(method, images, labels)
        scale = (applied.norm() * g_kd.norm()).item()
        assert (applied * g_kd).sum().item() >= -1e-5 * scale
        if (g_ce * g_kd).sum() < 0:
            conflicts += 1
            # lam = 1 removes the whole conflicting component: orthogonal to the KD gradient.
            assert abs((applied * g_kd).sum().item()) <= 1e-5 * scale
            expected = g_ce - (g_ce * g_kd).sum() / (g_kd * g_kd).sum() * g_kd
            torch.testing.assert_close(applied, expected)
        else:
            assert torch.equal(applied, g_ce)
        if 0 < conflicts < seed + 1 and seed >= 3:  # both branches exercised
            break
    assert conflicts > 0, "no seed exercised the projection"


def test_maple_vision_prompts_are_the_coupling_function_of_its_text_prompts(monkeypatch):
    method = build("maple")
    seen = []
    import clipfit.methods.maple as maple

    real = maple.encode_image_prompted

    def spy(model, images, prompts):
        seen.append(prompts)
        return real(model, images, prompts)

    monkeypatch.setattr(maple, "encode_image_prompted", spy)
    images, _ = colour_batch(n=2)
    method.encode_images(images)
    learner = method.prompt_learner
    (prompts,) = seen
    assert len(prompts) == method.depth == 2  # the tiny CLIP's 2 blocks, all prompted (the paper's 9 on ViT-B/16)
    assert "prompts in all of them" in method.notes[0]
    torch.testing.assert_close(prompts[0], learner.ctx @ learner.proj.weight.t() + learner.proj.bias)
    couplings = zip(learner.compound_prompts_text, learner.compound_prompt_projections)
    for k, (text, coupling) in enumerate(couplings, start=1):
        torch.testing.assert_close(prompts[k], text @ coupling.weight.t() + coupling.bias)


def test_inherent_parameter_variants_select_by_structure():
    method = build("bitfit-text-mlp")
    assert all(key.startswith("transformer.") and ".mlp." in key and key.endswith(".bias")
               for key in method.trainable_parameters())
    method = build("bitfit-all")
    keys = set(method.trainable_parameters())
    assert any(k.startswith("visual.") for k in keys) and any(k.startswith("transformer.") for k in keys)
    assert all(k.endswith(("bias", "in_proj_bias")) for k in keys)
    clipfit_image_side = {k for k in build("clipfit").trainable_parameters() if k.startswith("visual.")}
    assert set(build("ln-only").trainable_parameters()) == clipfit_image_side


def test_a_training_free_fit_runs_through_the_same_runner_and_adapter_file(eurosat_root, tmp_path):
    # A test-only method: the class means of the (augmented) training images' features, fitted in one pass
    # with no gradient. It cannot name classes it never saw, so base-to-new refuses it.
    class ClassMeans(Method):
        name = "test-class-means"
        classifies_unseen_classes = False

        @classmethod
        def training_regime(cls, config):
            return Regime(fit=True, optimise=None, views=2)

        def add_modules(self):
            self.register_buffer("class_means", torch.zeros(len(self.classnames), self.clip.visual.output_dim))

        def fit(self, features, labels, val):
            sums = torch.zeros_like(self.class_means).index_add_(0, labels, features.mean(dim=0))
            counts = torch.bincount(labels, minlength=len(self.class_means))
            self.class_means.copy_(sums / counts[:, None])
            return {"images": len(labels), "views": features.shape[0], "val_images": len(val[1])}

        def classifier(self):
            return F.normalize(self.class_means, dim=-1)

    register_method(ClassMeans)
    try:
        config = RunConfig(method="test-class-means", model=TINY_MODEL, pretrained="none", dataset="eurosat",
                           data_root=str(eurosat_root), protocol="few-shot", shots=4, seeds=[1],
                           out=str(tmp_path / "run"))
        summary = api.run(config, progress=False, echo=False)
        accuracy = summary["per_seed"][0]["accuracy"]
        assert accuracy > 50.0  # four colours, four classes: the class means separate them
        loaded = load_adapter(tmp_path / "run" / "seed1" / "adapter.safetensors")
        assert loaded.class_means.abs().sum() > 0
        assert api.evaluate_run(tmp_path / "run" / "seed1", progress=False)["accuracy"] == accuracy
        log = (tmp_path / "run" / "seed1" / "log.txt").read_text()
        assert "images=16 views=2 val_images=" in log and "16 training images x 2 augmented views encoded once" in log
    finally:
        METHODS.unregister("test-class-means")


def test_a_format_1_clipfit_adapter_still_loads(tmp_path):
    # Format 1 (before added modules existed): backbone tensors only, no precision in the metadata.
    from safetensors.torch import save_file

    method = build("clipfit")
    with torch.no_grad():
        for p in method.trainable_parameters().values():
            p.add_(0.01)
    tensors = {k: v.contiguous() for k, v in method.adapter_state().items()}
    meta = {"format": "clipfit-adapter/1", "clipfit_version": "0.1.0", "model": TINY_MODEL, "pretrained": "none",
            "method": "clipfit", "method_options": '{"beta": 8.0}',
            "classnames": '["annual crop", "forest", "herbaceous vegetation", "highway"]',
            "template": TEMPLATE, "weights": weights_fingerprint(TINY_MODEL, "none")}
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=meta)
    loaded = load_adapter(tmp_path / "old.safetensors")
    for key, value in tensors.items():
        assert torch.equal(loaded.trainable_parameters()[key].detach(), value)


def test_options_that_cannot_work_are_refused_naming_the_option(tmp_path):
    with pytest.raises(ClipFitError, match="option ctx_init has 70 words; the context takes at most 64"):
        build("coop", ctx_init=" ".join(["x"] * 70))
    with pytest.raises(ClipFitError, match="option n_ctx must be an integer from 1 to 64, got 0"):
        build("maple", n_ctx=0)
    with pytest.raises(ClipFitError, match="ln-only: nothing to train on this backbone"):
        api.count_parameters("ln-only", "RN50")
    from clipfit.cli import main

    with pytest.raises(SystemExit), pytest.MonkeyPatch.context() as mp:
        errors = []
        mp.setattr("sys.stderr.write", errors.append)
        main(["train", "--method", "kgcoop", "--beta", "5", "--dataset", "mini_colors", "--out", str(tmp_path / "x")])
    assert any("--beta does not apply to method 'kgcoop'" in e and "w" in e for e in errors)


@pytest.mark.parametrize("name, options, message", [
    ("clip-adapter", {"reduction": 1000}, "reduction=1000 leaves no bottleneck of the 32-d feature"),
    ("clip-adapter", {"augmentation": "fresh", "views": 3}, "views=3 applies to augmentation=cached-views only"),
    ("tip-adapter", {"alpha_max": 0.0}, "alpha_max must be above 0.1"),
    ("tip-adapter", {"augmentation": "fresh"}, "has no option.s. augmentation"),
    ("vpt-shallow", {"deep": True}, "is VPT-deep: use --method vpt-deep"),
])
def test_options_the_adapter_methods_cannot_use_are_refused(name, options, message):
    with pytest.raises(ClipFitError, match=message):
        build(name, **options)


@pytest.mark.parametrize("optim, method, message", [
    ({"epochs": 3, "iterations": 5}, "tip-adapter-f", "give epochs .3. or iterations .5., not both"),
    ({"iterations": 5}, "coop", "method 'coop' steps its schedule once per epoch"),
])
def test_a_training_length_the_schedule_cannot_take_is_refused(optim, method, message, eurosat_root):
    config = RunConfig(method=method, model=TINY_MODEL, pretrained="none", dataset="eurosat",
                       data_root=str(eurosat_root), optim=OptimConfig(**optim))
    with pytest.raises(ClipFitError, match=message):
        resolve(config)


def test_a_base_to_new_refusal_names_the_head_that_would_work(eurosat_root):
    config = RunConfig(method="vpt-shallow", model=TINY_MODEL, pretrained="none", dataset="eurosat",
                       data_root=str(eurosat_root), protocol="base2new")
    with pytest.raises(ClipFitError, match="use --protocol few-shot or --type vision-language"):
        resolve(config)


def test_load_adapter_takes_a_seed_folder_or_its_file(trained, tmp_path):
    method, *_ = trained
    save_tiny_adapter(method, tmp_path / "adapter.safetensors")
    assert type(load_adapter(tmp_path)) is type(load_adapter(tmp_path / "adapter.safetensors")) is type(method)


def test_each_method_brings_its_papers_recipe():
    # CoOp COOP.md: 1 shot 50 epochs, 2-4 shots 100, 8-16 shots 200, ImageNet 50; base-to-new (ctxv1) 200.
    coop = get_method("coop")
    epochs = [coop.optim_defaults("few-shot", "eurosat", k)["epochs"] for k in (1, 2, 4, 8, 16)]
    assert epochs == [50, 100, 100, 200, 200]
    assert coop.optim_defaults("few-shot", "imagenet", 16)["epochs"] == 50
    assert coop.optim_defaults("base2new", "eurosat")["epochs"] == 200
    assert coop.protocol_defaults("base2new", "eurosat") == {"ctx_init": "a photo of a"}
    # KgCoOp base2new_train.sh: batch 128, 100 epochs; few-shot batch 32 (htyao89/KgCoOp#4).
    assert get_method("kgcoop").optim_defaults("base2new", "eurosat") == {"epochs": 100, "batch_size": 128, "lr": 0.002}
    assert get_method("kgcoop").optim_defaults("few-shot", "eurosat")["batch_size"] == 32
    # CoCoOp: batch 1, 10 epochs; MaPLe: batch 4, lr 0.0035, 5 epochs (cross-dataset: J 3, lr 0.0026, 2 epochs).
    assert get_method("cocoop").optim_defaults("base2new", "eurosat") == {"epochs": 10, "batch_size": 1, "lr": 0.002}
    assert get_method("maple").optim_defaults("base2new", "eurosat") == {"epochs": 5, "batch_size": 4, "lr": 0.0035}
    assert get_method("maple").optim_defaults("cross-dataset", "imagenet") == {
        "epochs": 2, "batch_size": 4, "lr": 0.0026
    }
    assert get_method("maple").protocol_defaults("cross-dataset", "imagenet") == {"depth": 3}
    # ProGrad: its own template initialises the context; lam 0.8 for 8/16 shots on Flowers102, DTD, EuroSAT.
    prograd = get_method("prograd")
    assert prograd.protocol_defaults("few-shot", "oxford_pets", 16) == {
        "lam": 1.0, "teacher_template": "a type of pet, a photo of a {}.", "ctx_init": "a type of pet, a photo of a"}
    assert prograd.protocol_defaults("few-shot", "dtd", 8)["lam"] == 0.8
    assert prograd.protocol_defaults("few-shot", "dtd", 4)["lam"] == 1.0
    assert prograd.optim_defaults("base2new", "eurosat")["epochs"] == 100


def test_mini_tasks_whose_class_a_small_crop_loses_say_so_in_their_spec(tmp_path):
    from clipfit import data
    from clipfit.runner import training_crop_scale

    lowest = (("mini_digits", 0.5), ("mini_letters", 0.5), ("mini_shapes", 0.5), ("mini_colors", 0.08),
              ("mini_textures", 0.08))
    for task, low in lowest:
        assert data.get_spec(task).min_crop_area == low
        assert training_crop_scale(RunConfig(dataset=task)) == (low, 1.0)
    assert data.get_spec("eurosat").min_crop_area == 0.08
    assert training_crop_scale(RunConfig(dataset="mini_letters", crop_scale=(0.08, 1.0))) == (0.08, 1.0)
