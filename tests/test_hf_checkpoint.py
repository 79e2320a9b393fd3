"""Hugging Face `transformers` CLIPModel folders load as the equivalent open_clip CLIP (`clipfit.hf_checkpoint`).

The reference is transformers itself: a random-init `CLIPModel` of a small `CLIPConfig` (width 64, 2 layers,
4 heads, patch 16, image 32, projection 32), every tensor perturbed so that no bias or LayerNorm is at its
init value (a q/k/v packed in the wrong order, or a projection not transposed, would show), saved as
`save_pretrained` writes it (model.safetensors) and as older transformers wrote it (`torch.save` of the
state dict into pytorch_model.bin, with the `position_ids` buffers it then persisted). Its own
`get_image_features` / `get_text_features`, on token ids from its own `CLIPTokenizer` (built from the CLIP
BPE vocabulary open_clip ships), are what our features must equal.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import load_file, save_file

from clipfit import api, hf_checkpoint
from clipfit.backbone import load_backbone, weights_fingerprint
from clipfit.cli import main
from clipfit.config import RunConfig
from clipfit.errors import BackboneError, ClipFitError
from clipfit.methods import METHODS

transformers = pytest.importorskip("transformers")

PROMPTS = ["a photo of a cat.", "A photo of an Annual Crop, a type of satellite image!",
           "X X X X herbaceous_vegetation.", "itap of a 3D-rendered café"]
# The open_clip model config the small CLIPConfig below is equivalent to, registered under this name.
EQUIVALENT = "test-hf-tiny-equivalent"


def small_config(**text_overrides) -> transformers.CLIPConfig:
    text = dict(vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, hidden_act="quick_gelu", **text_overrides)
    vision = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=16, hidden_act="quick_gelu")
    return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)


def random_clip(config: transformers.CLIPConfig) -> transformers.CLIPModel:
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def save(model: transformers.CLIPModel, folder: Path, form: str) -> Path:
    """The model folder as users download it: config.json and model.safetensors (save_pretrained), or
    pytorch_model.bin as transformers before 4.x's safetensors default wrote it (`torch.save` of the state
    dict, the `position_ids` buffers included)."""
    if form == "safetensors":
        model.save_pretrained(folder)
    else:
        model.config.save_pretrained(folder)
        state = dict(model.state_dict())
        state["text_model.embeddings.position_ids"] = torch.arange(77)[None]
        state["vision_model.embeddings.position_ids"] = torch.arange(5)[None]
        torch.save(state, folder / "pytorch_model.bin")
    weights = "model.safetensors" if form == "safetensors" else "pytorch_model.bin"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", weights]
    return folder


def hf_tokenizer():
    """transformers' CLIPTokenizer over the CLIP BPE vocabulary (the 49,408 entries: the 256 byte symbols,
    the same with "</w>", the 48,894 merges, then the two special tokens), built from open_clip's copy of it."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    merges = [tuple(line.split()) for line in gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:48895]]
    symbols = list(bytes_to_unicode().values())
    special = ["<|startoftext|>", "<|endoftext|>"]
    vocab = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), *special]
    assert len(vocab) == 49408
    return transformers.CLIPTokenizer(vocab={token: i for i, token in enumerate(vocab)}, merges=merges)


def features(output) -> torch.Tensor:
    """transformers 5 returns an output object with the projected `pooler_output`; 4.x a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def normalised(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


@pytest.fixture(scope="module")
def hf_model():
    return random_clip(small_config())


@pytest.fixture(scope="module", params=["safetensors", "bin"])
def folder(request, hf_model, tmp_path_factory):
    return save(hf_model, tmp_path_factory.mktemp(f"hf-{request.param}"), request.param)


@pytest.fixture(scope="module")
def equivalent(tmp_path_factory):
    """The open_clip architecture the small config describes, written by hand (not derived by the code
    under test) and registered with open_clip."""
    configs = tmp_path_factory.mktemp("configs")
    (configs / f"{EQUIVALENT}.json").write_text(json.dumps({
        "embed_dim": 32, "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
    }))
    open_clip.add_model_config(configs)
    return EQUIVALENT


def test_open_clips_tokenizer_gives_the_hf_tokenizers_ids_up_to_the_end_of_text():
    ours = open_clip.get_tokenizer("ViT-B-32")(PROMPTS)
    theirs = torch.tensor(hf_tokenizer()(PROMPTS, padding="max_length", max_length=77)["input_ids"])
    for mine, hf in zip(ours, theirs):
        end = int(mine.argmax()) + 1  # 49407, the highest id, ends the prompt
        assert mine[end - 1] == hf[end - 1] == 49407
        assert torch.equal(mine[:end], hf[:end])
    assert (ours[:, -1] == 0).all() and (theirs[:, -1] == 49407).all()  # the padding differs: after the pooled token


def test_image_and_text_features_equal_transformers(folder, hf_model):
    backbone = load_backbone(hf_checkpoint.HF_MODEL, str(folder))
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    hf_ids = torch.tensor(hf_tokenizer()(PROMPTS, padding="max_length", max_length=77)["input_ids"])
    with torch.no_grad():
        hf_image = normalised(features(hf_model.get_image_features(pixel_values=images)))
        hf_text = normalised(features(hf_model.get_text_features(input_ids=hf_ids)))
        ours_image = normalised(backbone.model.encode_image(images))
        tokens = backbone.tokenize(PROMPTS)
        ours_text = normalised(backbone.model.encode_text(tokens))
        fast_text = backbone.encode_text(tokens)  # the fast path the methods use
    torch.testing.assert_close(ours_image, hf_image, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_text, hf_text, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast_text, hf_text, atol=1e-5, rtol=0)
    assert float(backbone.logit_scale.detach()) == pytest.approx(float(hf_model.logit_scale.detach().exp()))
    assert backbone.preprocess.image_size == 32 and backbone.preprocess.interpolation == "bicubic"


def test_a_legacy_config_pooling_at_argmax_gives_the_same_features(tmp_path):
    """eos_token_id 2 (configs before transformers PR #24773): transformers pools at argmax(input_ids)."""
    model = random_clip(small_config(eos_token_id=2))
    folder = save(model, tmp_path / "legacy", "safetensors")
    assert json.loads((folder / "config.json").read_text())["text_config"]["eos_token_id"] == 2
    backbone = load_backbone(hf_checkpoint.HF_MODEL, str(folder))
    tokens = backbone.tokenize(PROMPTS)
    with torch.no_grad():
        torch.testing.assert_close(backbone.encode_text(tokens),
                                   normalised(features(model.get_text_features(input_ids=tokens))), atol=1e-5, rtol=0)


def test_sharded_weights_load_as_their_index_names_them(tmp_path, hf_model, folder):
    """Large checkpoints come in shards named by model.safetensors.index.json (transformers' `weight_map`)."""
    sharded = write_config(tmp_path / "sharded", json.loads((folder / "config.json").read_text()))
    state = {k: v.contiguous() for k, v in hf_model.state_dict().items()}
    halves = {"model-00001-of-00002.safetensors": {k: v for k, v in state.items() if k.startswith("text_model.")}}
    halves["model-00002-of-00002.safetensors"] = {k: v for k, v in state.items() if not k.startswith("text_model.")}
    for name, tensors in halves.items():
        save_file(tensors, str(sharded / name))
    weight_map = {key: name for name, tensors in halves.items() for key in tensors}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_backbone("hf-clip", str(sharded)).model.encode_image(images),
                                   load_backbone("hf-clip", str(folder)).model.encode_image(images))
    (sharded / "model-00002-of-00002.safetensors").unlink()
    assert one_line_error("hf-clip", sharded) == (f"{sharded / 'model.safetensors.index.json'}: its shard "
                                                  f"model-00002-of-00002.safetensors is missing from {sharded}")


def test_the_architecture_is_open_clips_equivalent_one(folder, equivalent):
    arch = hf_checkpoint.architecture(folder)
    assert equivalent in hf_checkpoint.equivalent_architectures(arch)
    assert hf_checkpoint.differences(arch, equivalent) == []
    # Its open_clip name may be given instead of hf-clip; the state dicts have the same names and shapes.
    named = load_backbone(equivalent, str(folder))
    reference = open_clip.create_model(equivalent)
    assert {k: v.shape for k, v in named.model.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_methods_trainable_count_is_the_equivalent_architectures(folder, equivalent, method):
    ours, theirs = api.count_parameters(method, str(folder)), api.count_parameters(method, equivalent)
    assert ours == theirs


def test_clipfits_trainable_count_on_the_small_config(folder):
    # Text MLP output-projection biases 2 x 64; image LayerNorms ln_pre, 2 x (ln_1, ln_2), ln_post: 6 x 2 x 64.
    assert api.count_parameters("clipfit", str(folder))["groups"] == {
        "text MLP output-projection biases": 128, "image LayerNorms": 768}


def test_the_fingerprint_is_the_files_and_follows_the_weights(folder, tmp_path):
    first = weights_fingerprint(hf_checkpoint.HF_MODEL, str(folder))
    assert first.startswith("sha256:") and first == weights_fingerprint(hf_checkpoint.HF_MODEL, str(folder))
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in folder.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    assert weights_fingerprint(hf_checkpoint.HF_MODEL, str(copy)) == first  # bytes, not the path
    config = json.loads((copy / "config.json").read_text())
    config["logit_scale_init_value"] = 1.0
    (copy / "config.json").write_text(json.dumps(config))
    assert weights_fingerprint(hf_checkpoint.HF_MODEL, str(copy)) != first


def test_a_run_on_a_hf_folder_trains_without_model_and_its_adapter_reloads(eurosat_root, tmp_path, hf_model):
    folder = save(hf_model, tmp_path / "hf", "safetensors")
    out = tmp_path / "run"
    main(["train", "--pretrained", str(folder), "--dataset", "eurosat", "--data-root", str(eurosat_root),
          "--shots", "2", "--batch-size", "4", "--epochs", "1", "--seeds", "1", "--no-progress", "--out", str(out)])
    config = RunConfig.from_file(out / "seed1" / "config.json")
    assert (config.model, config.pretrained) == (hf_checkpoint.HF_MODEL, str(folder))
    metrics = json.loads((out / "seed1" / "metrics.json").read_text())
    assert metrics["weights"] == weights_fingerprint(config.model, config.pretrained)
    assert metrics["trainable_parameters"] == 896
    assert api.evaluate_run(out / "seed1", progress=False)["accuracy"] == metrics["accuracy"]
    # Exported for plain open_clip, the folder's architecture recorded in the file.
    image = next((eurosat_root / "eurosat" / "2750").rglob("*.png"))
    api.export(out / "seed1", tmp_path / "model.safetensors")
    exported = api.predict_exported(tmp_path / "model.safetensors", [image], device="cpu")[0]["top"]
    for (name, p), (same, q) in zip(exported, api.predict(out / "seed1", [image], device="cpu")[0]["top"]):
        assert name == same and p == pytest.approx(q, abs=1e-5)


def test_a_model_that_disagrees_with_config_json_is_refused_before_data(tmp_path, hf_model):
    folder = save(hf_model, tmp_path / "hf", "safetensors")
    config = RunConfig(model="ViT-B-32", pretrained=str(folder), dataset="imagefolder",
                       data_root=str(tmp_path / "no-such-folder"), seeds=[1])
    with pytest.raises(BackboneError) as info:
        api.run(config)
    message = str(info.value)
    assert message.startswith("--model ViT-B-32 disagrees with ") and str(folder / "config.json") in message
    assert "leave --model out" in message and "\n" not in message


def write_config(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def one_line_error(model: str, pretrained: Path) -> str:
    with pytest.raises(BackboneError) as info:
        load_backbone(model, str(pretrained))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_folder_without_config_json_or_weights_says_so(tmp_path, folder):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no config.json in it, so not a Hugging Face CLIPModel folder" in one_line_error("hf-clip", empty)
    no_weights = write_config(tmp_path / "no-weights", json.loads((folder / "config.json").read_text()))
    message = one_line_error("hf-clip", no_weights)
    assert message.startswith(f"{no_weights}: no weights (model.safetensors or pytorch_model.bin)")


@pytest.mark.parametrize("config, expected", [
    ({"model_type": "siglip", "architectures": ["SiglipModel"]}, "model_type 'siglip' (architectures SiglipModel)"),
    ({"model_type": "clip_vision_model", "architectures": ["CLIPVisionModelWithProjection"]},
     "model_type 'clip_vision_model' (architectures CLIPVisionModelWithProjection)"),
    ({"model_type": "clip", "architectures": ["CLIPVisionModel"]}, "model_type 'clip' (architectures CLIPVisionModel)"),
])
def test_a_config_that_is_not_a_clip_model_is_refused(tmp_path, config, expected):
    folder = write_config(tmp_path / "other", config)
    message = one_line_error("hf-clip", folder)
    assert message.startswith(f"{folder / 'config.json'}: {expected} is not a transformers CLIPModel")


@pytest.mark.parametrize("text, expected", [
    ({"vocab_size": 32000}, "vocab_size 32000 and max_position_embeddings 77 are not CLIP's BPE tokenizer's"),
    ({"max_position_embeddings": 64}, "vocab_size 49408 and max_position_embeddings 64 are not"),
    ({"hidden_act": "gelu_new"}, "text_config.hidden_act 'gelu_new' has no open_clip equivalent"),
    ({"eos_token_id": 1}, "text_config: eos_token_id 1 is not CLIP's end-of-text token"),
])
def test_a_config_without_an_open_clip_equivalent_is_refused(tmp_path, folder, text, expected):
    config = json.loads((folder / "config.json").read_text())
    config["text_config"] = {**config.get("text_config", {}), **text}
    message = one_line_error("hf-clip", write_config(tmp_path / "changed", config))
    assert message.startswith(str(tmp_path / "changed" / "config.json")) and expected in message, message


def changed_weights(folder: Path, tmp_path: Path, change) -> Path:
    copy = write_config(tmp_path / "changed", json.loads((folder / "config.json").read_text()))
    state = load_file(str(folder / "model.safetensors"))
    change(state)
    save_file(state, str(copy / "model.safetensors"))
    return copy


def test_missing_unexpected_and_misshapen_tensors_name_the_file_and_the_tensor(tmp_path, hf_model):
    folder = save(hf_model, tmp_path / "hf", "safetensors")
    key = "text_model.encoder.layers.1.self_attn.k_proj.bias"
    missing = changed_weights(folder, tmp_path / "a", lambda s: s.pop(key))
    assert one_line_error("hf-clip", missing).startswith(f"{missing / 'model.safetensors'}: missing tensor {key}: ")
    extra = changed_weights(folder, tmp_path / "b", lambda s: s.update({"text_model.pooler.weight": torch.ones(2)}))
    assert one_line_error("hf-clip", extra).startswith(
        f"{extra / 'model.safetensors'}: unexpected tensor text_model.pooler.weight: ")
    shape = "vision_model.post_layernorm.weight"
    misshapen = changed_weights(folder, tmp_path / "c", lambda s: s.update({shape: torch.ones(65)}))
    assert one_line_error("hf-clip", misshapen).startswith(
        f"{misshapen / 'model.safetensors'}: tensor {shape} has shape (65,) (as visual.ln_post.weight)")


def test_stored_position_ids_out_of_order_are_refused(tmp_path, hf_model):
    folder = save(hf_model, tmp_path / "hf", "bin")
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state["text_model.embeddings.position_ids"] = torch.arange(77).flip(0)[None]
    torch.save(state, folder / "pytorch_model.bin")
    assert "text_model.embeddings.position_ids is not 0, 1, 2, ..." in one_line_error("hf-clip", folder)


def test_a_pickle_that_holds_more_than_tensors_is_refused(tmp_path, hf_model):
    folder = save(hf_model, tmp_path / "hf", "bin")
    torch.save({"weights": Path("x")}, folder / "pytorch_model.bin")
    message = one_line_error("hf-clip", folder)
    assert message.startswith(f"{folder / 'pytorch_model.bin'}: not a readable PyTorch state dict"), message


def test_hf_clip_without_a_folder_is_refused_in_one_line():
    with pytest.raises(ClipFitError) as info:
        load_backbone(hf_checkpoint.HF_MODEL, "none")
    assert str(info.value) == ("model 'hf-clip' is the architecture of a Hugging Face CLIPModel folder given as "
                               "--pretrained; give the folder (config.json and model.safetensors or pytorch_model.bin)")
