"""Every open_clip CLIP family: each method either applies (and counts its trainable parameters on a weightless
skeleton) or says in one line why it cannot, and training refuses it with that line before reading any data.

Small stand-ins for the towers that differ in structure, registered below: a timm image tower (ConvNeXt-atto,
as in open_clip's convnext_* and, with other timm trunks, EVA's) and a SigLIP text tower (bidirectional,
pooled at its last position, with a logit bias), beside the suite's tiny ViT and ResNet CLIPs. The real
architectures' skeletons (no weights) are checked in the slow test at the end.
"""

from __future__ import annotations

import json
import time

import open_clip
import pytest
import torch

from clipfit import api, backbone
from clipfit.backbone import image_feature_dim, load_backbone
from clipfit.cli import main
from clipfit.config import RunConfig
from clipfit.errors import ClipFitError
from clipfit.methods import build_method

from conftest import TINY_MODEL

TIMM = "test-tiny-timm-convnext"
# Not "siglip" in the name: open_clip would fetch a SentencePiece tokenizer for it.
SIGLIP = "test-tiny-sigmoid-clip"
TINY_CONFIGS = {
    TIMM: {"embed_dim": 32,
           "vision_cfg": {"timm_model_name": "convnext_atto", "timm_model_pretrained": False, "timm_pool": "",
                          "timm_proj": "linear", "image_size": 32},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}},
    # ViT-B-16-SigLIP's text tower and logit bias (its tokenizer, a download, is open_clip's CLIP one here).
    SIGLIP: {"embed_dim": 32, "init_logit_bias": -10, "custom_text": True,
             "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2,
                          "no_causal_mask": True, "proj_bias": True, "pool_type": "last",
                          "norm_kwargs": {"eps": 1e-6}}},
}

RESNET_REFUSES = {"ln-only", "coop+ln", "kgcoop+ln", "clip-adapter+ln", "maple", "vpt-shallow", "vpt-deep"}
TIMM_REFUSES = {"maple", "vpt-shallow", "vpt-deep"}
TEXT_PROMPTS = {"coop", "coop+ln", "kgcoop", "kgcoop+ln", "prograd", "cocoop", "maple"}


@pytest.fixture(scope="module", autouse=True)
def tiny_families(tmp_path_factory):
    folder = tmp_path_factory.mktemp("families")
    for name, config in TINY_CONFIGS.items():
        (folder / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)


def outcomes(model: str) -> dict[str, int | str]:
    """Each method's few-shot trainable total, or the one-line reason it cannot apply."""
    found = {}
    for method in api.list_methods():
        try:
            found[method] = sum(api.count_parameters(method, model, "few-shot")["groups"].values())
        except ClipFitError as err:  # any other exception is a bug and fails the test
            found[method] = str(err)
    return found


def refused(found: dict[str, int | str]) -> set[str]:
    reasons = {method: why for method, why in found.items() if isinstance(why, str)}
    assert all("\n" not in why for why in reasons.values()), reasons
    return set(reasons)


@pytest.mark.parametrize("model, expected", [
    (TINY_MODEL, set()), ("tiny-rn", RESNET_REFUSES), (TIMM, TIMM_REFUSES), (SIGLIP, TEXT_PROMPTS),
])
def test_every_method_counts_or_says_in_one_line_why_it_cannot_apply(model, expected):
    assert refused(outcomes(model)) == expected


def test_the_reasons_name_what_the_tower_lacks():
    rn, timm, siglip = outcomes("tiny-rn"), outcomes(TIMM), outcomes(SIGLIP)
    assert rn["coop+ln"] == "method coop+ln: the image tower has no LayerNorm (a ResNet) to train"
    assert rn["vpt-shallow"].startswith("ModifiedResNet (not a ViT): visual prompts need an open_clip VisionTransf")
    assert timm["maple"].startswith("TimmModel (a timm tower: EVA, ConvNeXt, SigLIP): visual prompts need")
    assert siglip["coop"] == ("learned text prompts need a causal text tower pooled at its end-of-text token (CLIP's); "
                              "this one has no causal mask and pools 'last' (SigLIP's does so)")


def test_training_refuses_an_inapplicable_method_with_that_reason_before_reading_data(tmp_path):
    reason = outcomes("tiny-rn")["vpt-deep"]
    missing = tmp_path / "no-such-data"
    config = RunConfig(model="tiny-rn", pretrained="none", method="vpt-deep", dataset="imagefolder",
                       data_root=str(missing), seeds=[1], out=str(tmp_path / "run"))
    with pytest.raises(ClipFitError) as info:
        api.run(config)
    assert str(info.value) == f"method 'vpt-deep' does not apply to tiny-rn: {reason}"
    assert not missing.exists() and not (tmp_path / "run").exists()


def test_params_all_prints_each_methods_counts_or_its_reason(capsys):
    main(["params", "--method", "all", "--model", SIGLIP])
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines at the console's width
    assert f"note: coop: {outcomes(SIGLIP)['coop']}" in out
    assert "│ clipfit │" in out and "│ coop │ - │ - │" in out
    assert "note: a SigLIP model (pretrained with a sigmoid loss and a logit bias)" in out


def test_timm_towers_give_features_of_the_size_the_heads_and_adapters_are_built_for():
    backbone = load_backbone(TIMM, "none")
    assert not hasattr(backbone.model.visual, "output_dim") and image_feature_dim(backbone.model) == 32
    images = torch.randn(2, 3, 32, 32)
    for method in ("clip-adapter", "linear-probe", "cocoop", "tip-adapter", "clipfit"):
        options = {"beta": 1.0} if method == "clipfit" else {}
        built = build_method(method, backbone, ["cat", "dog", "bird"], "a photo of a {}.", options)
        if method == "tip-adapter":
            continue  # its cache is sized by the few-shot set, only once fitted
        with torch.no_grad():
            assert built.logits(images, built.classifier()).shape == (2, 3)


def test_clipfit_trains_on_a_siglip_text_tower_and_leaves_the_logit_bias_alone(eurosat_root, tmp_path):
    summary = api.run(RunConfig(model=SIGLIP, pretrained="none", method="clipfit", dataset="eurosat",
                                data_root=str(eurosat_root), shots=2, seeds=[1], out=str(tmp_path / "run"),
                                optim=api.OptimConfig(epochs=1, batch_size=4)), progress=False)
    assert summary["per_seed"][0]["trainable_parameters"] == 2 * 32 + 6 * 2 * 32  # text MLP biases, image LNs
    method = api.load_adapter(tmp_path / "run" / "seed1")
    assert not method.clip.logit_bias.requires_grad and "logit_bias" not in method.trainable_parameters()


# What the table in the README's "Backbones" section says, on the real architectures' skeletons.
FAMILIES = {
    "RN50": RESNET_REFUSES,
    "ViT-B-32-quickgelu": set(),
    "EVA02-B-16": TIMM_REFUSES,
    "convnext_base": TIMM_REFUSES,
    "ViT-B-16-SigLIP": TEXT_PROMPTS | TIMM_REFUSES,
}


@pytest.mark.slow
@pytest.mark.parametrize("model", list(FAMILIES))
def test_real_families_skeletons(model):
    assert refused(outcomes(model)) == FAMILIES[model]


def test_a_tokenizer_that_must_be_fetched_fails_at_once_offline(monkeypatch):
    """ViT-B-16-SigLIP's tokenizer lives on the Hugging Face hub (not cached here): one line, no retries."""
    monkeypatch.setattr(backbone, "_hub_reachable", lambda host, timeout=3.0: False)
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *args, **kwargs: None)
    started = time.time()
    with pytest.raises(ClipFitError) as info:
        load_backbone("ViT-B-16-SigLIP", "none")
    assert str(info.value) == ("the tokenizer of ViT-B-16-SigLIP (timm/ViT-B-16-SigLIP on the Hugging Face hub) is "
                               "not cached and huggingface.co is unreachable (offline?)")
    assert time.time() - started < 5
