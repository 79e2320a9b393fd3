"""Backbones: parameter counts by structure, exact fast text encoding, and loading rules (offline included)."""

from __future__ import annotations

import time

import pytest
import torch
from safetensors.torch import save_file

from clipfit import api, backbone
from clipfit.backbone import load_backbone
from clipfit.cli import main
from clipfit.errors import BackboneError

from conftest import TINY_MODEL


@pytest.mark.parametrize(
    "model, text, image",
    [("ViT-B-16", 6_144, 39_936), ("ViT-B-32", 6_144, 39_936), ("ViT-L-14", 9_216, 102_400)],
)
def test_clipfit_trains_text_mlp_output_biases_and_image_layernorms(model, text, image):
    groups = api.count_parameters("clipfit", model)["groups"]
    assert groups == {"text MLP output-projection biases": text, "image LayerNorms": image}


def test_clipfit_totals_match_the_paper():
    assert sum(api.count_parameters("clipfit", "ViT-B-16")["groups"].values()) == 46_080
    assert sum(api.count_parameters("clipfit", "ViT-L-14")["groups"].values()) == 111_616


def test_resnet_image_tower_trains_text_biases_only_and_says_so():
    counts = api.count_parameters("clipfit", "RN50")
    assert counts["groups"]["image LayerNorms"] == 0
    assert counts["groups"]["text MLP output-projection biases"] == 12 * 512
    assert any("no LayerNorm" in note for note in counts["notes"])


def test_params_command_prints_the_total(capsys):
    main(["params", "--method", "clipfit", "--model", "ViT-B-16"])
    assert "46,080" in capsys.readouterr().out


def test_truncated_text_encoding_equals_full_length_encoding():
    bb = load_backbone(TINY_MODEL, "none")
    tokens = bb.tokenize(["a photo of a cat.", "a centered satellite photo of annual crop land.", "x"])
    full = torch.nn.functional.normalize(bb.model.encode_text(tokens), dim=-1)
    torch.testing.assert_close(bb.encode_text(tokens), full, rtol=1e-5, atol=1e-6)


def test_random_init_is_reproducible():
    a, b = load_backbone(TINY_MODEL, "none"), load_backbone(TINY_MODEL, "none")
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_checkpoint_file_loads(tmp_path, suffix):
    torch.manual_seed(123)
    import open_clip

    source = open_clip.create_model(TINY_MODEL)
    path = tmp_path / f"ckpt{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    else:
        torch.save(source.state_dict(), path)
    loaded = load_backbone(TINY_MODEL, str(path))
    for name, value in source.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name


def test_missing_checkpoint_file_is_named(tmp_path):
    with pytest.raises(BackboneError, match="checkpoint file not found: .*nope.pt"):
        load_backbone(TINY_MODEL, str(tmp_path / "nope.pt"))


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path):
    path = tmp_path / "wrong.safetensors"
    save_file({"foo": torch.zeros(3)}, str(path))
    with pytest.raises(BackboneError, match="cannot load checkpoint .*wrong.safetensors into tiny-clip"):
        load_backbone(TINY_MODEL, str(path))


def test_unknown_model_and_unknown_tag_are_clear_errors():
    with pytest.raises(BackboneError, match="unknown model 'ViT-Q-99'"):
        load_backbone("ViT-Q-99", "none")
    with pytest.raises(BackboneError, match="unknown pretrained tag 'nonsense'.*openai"):
        load_backbone("ViT-B-16", "nonsense")


def test_offline_pretrained_tag_fails_at_once_in_one_line(tmp_path, eurosat_root, monkeypatch, capsys):
    monkeypatch.setattr(backbone, "_hub_reachable", lambda host, timeout=3.0: False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "ViT-B-16", "--pretrained", "openai", "--method", "zeroshot",
              "--dataset", "eurosat", "--data-root", str(eurosat_root), "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert time.monotonic() - started < 10
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "unreachable" in err and "--pretrained /path/to/" in err
