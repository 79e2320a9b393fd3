"""`clipfit export`: for every registered method, the exported file classifies as the tuned run does, loaded
with plain open_clip (and, beyond the CLIP, a few lines of torch); methods whose prompts change how the
towers run are refused with a message naming what to use instead."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from clipfit import api
from clipfit.backbone import load_backbone
from clipfit.config import OptimConfig, RunConfig
from clipfit.errors import ClipFitError
from clipfit.export import ExportedModel
from clipfit.methods import METHODS
from clipfit.runner import load_run

from conftest import TINY_MODEL

# Their learned prompts live inside the towers' forward, which plain open_clip cannot run.
NOT_EXPORTABLE = {"maple", "cocoop", "vpt-shallow", "vpt-deep"}
FORMS = {"linear-probe": "linear_head", "clip-adapter": "adapter", "clip-adapter+ln": "adapter", "tip-adapter": "cache",
         "tip-adapter-f": "cache", "coop": "class_features", "coop+ln": "class_features", "kgcoop": "class_features",
         "kgcoop+ln": "class_features", "prograd": "class_features"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One finished few-shot seed per method on the tiny CLIP (one epoch: the export, not the training, is tested)."""
    from conftest import make_coop_eurosat

    root = make_coop_eurosat(tmp_path_factory.mktemp("data"))
    out = tmp_path_factory.mktemp("runs")
    done = {}
    for name in METHODS:
        config = RunConfig(method=name, model=TINY_MODEL, pretrained="none", dataset="eurosat", data_root=str(root),
                           protocol="few-shot", shots=2, seeds=[1], optim=OptimConfig(epochs=2), out=str(out / name))
        api.run(config, progress=False, echo=False)
        done[name] = out / name / "seed1"
    return done


def tuned_logits(seed_dir, images):
    _, method = load_run(seed_dir, device="cpu")
    with torch.no_grad():
        return method.logits(images, method.classifier())


@pytest.mark.parametrize("name", list(METHODS))
def test_the_exported_model_gives_the_tuned_models_logits(name, runs, tmp_path):
    out = tmp_path / "model.safetensors"
    if name in NOT_EXPORTABLE:
        with pytest.raises(ClipFitError, match="clipfit predict --run"):
            api.export(runs[name], out)
        assert not out.exists()
        return
    meta = api.export(runs[name], out)
    assert meta["form"] == FORMS.get(name, "open_clip")
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = tuned_logits(runs[name], images)
    # Plain open_clip, as the README shows it: the CLIP's keys load strictly once clipfit.* is set aside.
    state = load_file(str(out))
    with safe_open(str(out), "pt") as f:
        metadata = f.metadata()
    extra = {k: state.pop(k) for k in list(state) if k.startswith("clipfit.")}
    model = open_clip.create_model(metadata["architecture"]).eval()
    model.load_state_dict(state)
    if meta["form"] == "open_clip":
        assert extra == {}
        tokens = open_clip.get_tokenizer(metadata["architecture"])(json.loads(metadata["prompts"]))
        with torch.no_grad():
            image = F.normalize(model.encode_image(images), dim=-1)
            text = F.normalize(model.encode_text(tokens), dim=-1)
            logits = model.logit_scale.exp() * image @ text.t()
    else:
        logits = ExportedModel(out).logits(images)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_a_merged_clip_lora_export_is_the_base_clip_with_changed_attention_weights_only(runs, tmp_path):
    out = tmp_path / "lora.safetensors"
    api.export(runs["clip-lora"], out)
    exported = load_file(str(out))
    base = load_backbone(TINY_MODEL, "none").model.state_dict()  # the run's base weights
    changed = {k for k in base if not torch.equal(base[k], exported[k])}
    assert changed and all(k.endswith("attn.in_proj_weight") or k == "logit_scale" for k in changed)


def test_predict_reads_an_exported_file(runs, tmp_path):
    out = tmp_path / "clipfit.safetensors"
    api.export(runs["clipfit"], out)
    image = next(p for p in runs["clipfit"].parents[2].rglob("*.png"))
    top = api.predict_exported(out, [image], top_k=2)[0]["top"]
    by_run = api.predict(runs["clipfit"], [image], top_k=2, device="cpu")[0]["top"]
    assert [c for c, _ in top] == [c for c, _ in by_run]
    assert [p for _, p in top] == pytest.approx([p for _, p in by_run], abs=1e-4)


def test_a_file_that_is_not_an_export_is_refused_naming_it(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(1)}, str(path))
    with pytest.raises(ClipFitError, match="other.safetensors: not a clipfit export"):
        ExportedModel(path)
    (tmp_path / "photo.png").write_bytes(b"\x89PNG not a tensor file")
    with pytest.raises(ClipFitError, match="photo.png: not a readable safetensors file"):
        ExportedModel(tmp_path / "photo.png")
    with pytest.raises(ClipFitError, match="no such file"):
        ExportedModel(tmp_path)


def test_export_to_a_folder_is_refused_before_anything_is_written(runs, tmp_path):
    with pytest.raises(ClipFitError, match="is a folder; give the file to write"):
        api.export(runs["clipfit"], tmp_path)
    assert list(tmp_path.iterdir()) == []
