"""Checkpoint and adapter files: OpenAI's TorchScript archives load without running them, a file that is not a
checkpoint is one line naming it, and an adapter whose tensors changed after saving is refused."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import zipfile

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from clipfit.adapter import AdapterInfo, read_adapter, save_adapter
from clipfit.backbone import build_skeleton, load_backbone, weights_fingerprint
from clipfit.errors import BackboneError, ClipFitError
from clipfit.files import file_sha256

from conftest import TINY_MODEL

# The state-dict entries OpenAI's archives hold besides the weights.
OPENAI_EXTRAS = {"input_resolution": 32, "context_length": 77, "vocab_size": 49408}


def openai_layout_clip(seed: int) -> torch.nn.Module:
    """A tiny CLIP laid out as OpenAI's archived ones: QuickGELU, and the input resolution, context length
    and vocabulary size as tensors of the top module (open_clip keeps the last two as plain ints)."""
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_MODEL, force_quick_gelu=True).eval()
    for name, value in OPENAI_EXTRAS.items():
        model.__dict__.pop(name, None)
        model.register_buffer(name, torch.tensor(value))
    return model


def export_traced(model: torch.nn.Module) -> torch.jit.ScriptModule:
    example = (torch.randn(1, 3, 32, 32, dtype=model.logit_scale.dtype), torch.randint(0, 49408, (1, 77)))
    return torch.jit.trace(model, example, strict=False, check_trace=False)


EXPORTS = {
    "traced": lambda model: export_traced(model),
    "traced-float16": lambda model: export_traced(model.half()),  # OpenAI's archives hold float16 weights
    "scripted": torch.jit.script,
}


@pytest.mark.parametrize("export", list(EXPORTS))
def test_openai_torchscript_archive_loads_its_weights_exactly_without_torch_jit(tmp_path, monkeypatch, export):
    source = openai_layout_clip(seed=7)
    path = tmp_path / "ViT-tiny.pt"
    EXPORTS[export](source).save(str(path))
    # Read after the export, which may have cast the source to float16; float16 to float32 is exact.
    expected = {k: v.float() for k, v in source.state_dict().items() if k not in OPENAI_EXTRAS}
    names = zipfile.ZipFile(path).namelist()
    assert {"ViT-tiny/data.pkl", "ViT-tiny/constants.pkl", "ViT-tiny/data/0"} <= set(names)  # OpenAI's layout

    jit_loads = []
    monkeypatch.setattr(torch.jit, "load", lambda *args, **kwargs: jit_loads.append(args))
    loaded = load_backbone(TINY_MODEL, str(path)).model.state_dict()
    assert jit_loads == []
    assert set(loaded) == set(expected)
    for name, value in expected.items():
        assert torch.equal(loaded[name], value), name


class RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_torchscript_archive_naming_another_global_is_refused_without_calling_it(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps(RunsACommand(marker), protocol=2))
        archive.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
    with pytest.raises(BackboneError, match=r"evil\.pt into tiny-clip: .*global \w+\.system is not allowed") as info:
        load_backbone(TINY_MODEL, str(path))
    assert not marker.exists()
    assert "\n" not in str(info.value)


def test_torchscript_record_shorter_than_its_tensor_is_refused(tmp_path):
    whole, cut = tmp_path / "whole.pt", tmp_path / "cut.pt"
    export_traced(openai_layout_clip(seed=1)).save(str(whole))
    with zipfile.ZipFile(whole) as source, zipfile.ZipFile(cut, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            target.writestr(item, data[:-4] if item.filename == "whole/data/0" else data)
    with pytest.raises(BackboneError, match=r"cut\.pt into tiny-clip: .*record whole/data/0 holds \d+ bytes, not \d+"):
        load_backbone(TINY_MODEL, str(cut))


class Opaque:
    """An object torch.load(weights_only=True) refuses: it is no tensor nor plain container."""


def another_architecture_state() -> dict[str, torch.Tensor]:
    model = open_clip.model.CLIP(
        embed_dim=16,
        vision_cfg={"image_size": 32, "layers": 1, "width": 16, "patch_size": 16, "head_width": 8},
        text_cfg={"context_length": 77, "vocab_size": 1000, "width": 16, "heads": 2, "layers": 1},
    )
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def write_text(path):
    path.write_text("these are not weights\n")


def write_empty(path):
    path.write_bytes(b"")


def write_another_architecture(path):
    if path.suffix == ".safetensors":
        save_file(another_architecture_state(), str(path))
    else:
        torch.save(another_architecture_state(), path)


def write_refused_pickle(path):
    torch.save({"visual.proj": torch.zeros(2), "extra": Opaque()}, path)


BAD_FILES = [
    (write_text, ".pt", "not a PyTorch checkpoint"),
    (write_text, ".bin", "not a PyTorch checkpoint"),
    (write_text, ".pth", "not a PyTorch checkpoint"),
    (write_text, ".safetensors", "not a safetensors file"),
    (write_empty, ".pt", "the file is empty"),
    (write_empty, ".bin", "the file is empty"),
    (write_empty, ".pth", "the file is empty"),
    (write_empty, ".safetensors", "the file is empty"),
    (write_another_architecture, ".pt", "does not fit this architecture"),
    (write_another_architecture, ".bin", "does not fit this architecture"),
    (write_another_architecture, ".pth", "does not fit this architecture"),
    (write_another_architecture, ".safetensors", "tensor names do not match"),
    (write_refused_pickle, ".pt", "weights_only=True.* refuses: Unsupported global: .*Opaque"),
    (write_refused_pickle, ".bin", "weights_only=True.* refuses: Unsupported global: .*Opaque"),
    (write_refused_pickle, ".pth", "weights_only=True.* refuses: Unsupported global: .*Opaque"),
]


@pytest.mark.parametrize("write, suffix, reason", BAD_FILES, ids=[f"{w.__name__[6:]}{s}" for w, s, _ in BAD_FILES])
def test_a_file_that_is_not_a_checkpoint_is_one_line_naming_the_file_and_why(tmp_path, write, suffix, reason):
    path = tmp_path / f"weights{suffix}"
    write(path)
    with pytest.raises(BackboneError) as info:
        load_backbone(TINY_MODEL, str(path))
    message = str(info.value)
    assert message.startswith(f"cannot load checkpoint {path} into {TINY_MODEL}: ")
    assert re.search(reason, message), message
    assert "\n" not in message and "None" not in message


def test_unknown_model_names_close_matches_and_a_command_that_lists_them():
    for build in (lambda name: load_backbone(name, "none"), build_skeleton):
        with pytest.raises(BackboneError) as info:
            build("ViT-B-61")
        message = str(info.value)
        assert re.search(r"close matches: [^)]*\bViT-B-16\b", message), message
        assert message.endswith("; `clipfit models` lists them")  # the hint names a real command (run below)
    listed = subprocess.run(
        [sys.executable, "-m", "clipfit.cli", "models"], capture_output=True, text=True, check=True
    ).stdout
    assert any(line.split()[0] == "ViT-B-16" for line in listed.splitlines())


def adapter_info() -> AdapterInfo:
    return AdapterInfo(TINY_MODEL, "none", "clipfit", {"beta": 8.0}, ["cat", "dog"], "a photo of a {}.")


def test_messages_never_print_none(tmp_path):
    no_format = tmp_path / "no-format.safetensors"
    save_file({"x": torch.zeros(1)}, str(no_format))
    causes = {
        "built-in weights a model does not have": lambda: weights_fingerprint(TINY_MODEL, "builtin"),
        "a tag for a model open_clip has no tags for": lambda: load_backbone(TINY_MODEL, "openai"),
        "an adapter file without a format": lambda: read_adapter(no_format),
    }
    for cause, call in causes.items():
        with pytest.raises(ClipFitError) as info:
            call()
        assert "None" not in str(info.value) and "none;" not in str(info.value), (cause, str(info.value))


def test_adapter_checksum_is_sha256_of_names_dtypes_shapes_and_bytes(tmp_path):
    path = tmp_path / "adapter.safetensors"
    save_adapter(path, {"b": torch.tensor([1.0, -2.0]), "a": torch.tensor([[0.5]])}, adapter_info())
    expected = hashlib.sha256(
        b'["a", "torch.float32", [1, 1]]\n' + struct.pack("<f", 0.5)
        + b'["b", "torch.float32", [2]]\n' + struct.pack("<2f", 1.0, -2.0)
    ).hexdigest()
    header_length = int.from_bytes(path.read_bytes()[:8], "little")
    metadata = json.loads(path.read_bytes()[8 : 8 + header_length])["__metadata__"]
    assert metadata["tensors_sha256"] == expected


def test_adapter_with_a_flipped_tensor_byte_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "adapter.safetensors"
    save_adapter(path, {"text.bias": torch.arange(6.0), "visual.ln.weight": torch.ones(4)}, adapter_info())
    data = bytearray(path.read_bytes())
    # safetensors: a little-endian u64 header length, the JSON header, then the tensors' bytes.
    header_length = int.from_bytes(data[:8], "little")
    start, _ = json.loads(data[8 : 8 + header_length])["visual.ln.weight"]["data_offsets"]
    data[8 + header_length + start] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ClipFitError, match=f"^{re.escape(str(path))}: tensor data does not match the checksum") as info:
        read_adapter(path)
    assert "\n" not in str(info.value)


def test_adapter_written_before_checksums_still_loads(tmp_path):
    path = tmp_path / "adapter.safetensors"
    tensors = {"text.bias": torch.arange(6.0)}
    save_file(tensors, str(path), metadata=adapter_info().to_metadata())
    loaded, info = read_adapter(path)
    assert torch.equal(loaded["text.bias"], tensors["text.bias"]) and info == adapter_info()


def test_a_local_checkpoint_is_fingerprinted_by_the_sha256_of_its_bytes_as_they_are_now(tmp_path):
    path = tmp_path / "weights.pt"
    data = bytes(range(256)) * 5000  # over one 1 MiB read
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert weights_fingerprint(TINY_MODEL, str(path)) == "sha256:" + hashlib.sha256(data).hexdigest()
    path.write_bytes(data[:-1])  # other bytes: a new size (and mtime), so not the remembered digest
    assert weights_fingerprint(TINY_MODEL, str(path)) == "sha256:" + hashlib.sha256(data[:-1]).hexdigest()
    with pytest.raises(FileNotFoundError):
        file_sha256(tmp_path / "missing.pt")
