"""Adapter files: the tuned tensors only, as safetensors, with the metadata that names the base model.

Format 2 (this version) holds the backbone tensors a method trains under their state-dict keys and the
tensors of modules the method adds under `method.<name>` (see `clipfit.methods.base`), and records the
precision the model was trained and measured in. Format 1 files (CLIPFit before prompt learners
existed: backbone tensors only, fp32) still load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .errors import ClipFitError
from .files import atomic_write

FORMAT = "clipfit-adapter/2"
READABLE_FORMATS = ("clipfit-adapter/1", FORMAT)
# Metadata field with `tensors_sha256` of the tensors; files written before it existed have none.
CHECKSUM_FIELD = "tensors_sha256"


@dataclass
class AdapterInfo:
    model: str
    pretrained: str
    method: str
    method_options: dict
    classnames: list[str]
    template: str
    weights: str = ""  # backbone.weights_fingerprint of the base weights it was trained on
    precision: str = "fp32"  # the weight layout it was trained and measured in (engine.PRECISIONS)
    # The prompt ensemble it classifies or was trained with (`Method.set_templates`); None: the template alone.
    # Recorded only when there is one, so files without one are as before.
    templates: list[str] | None = None

    def to_metadata(self) -> dict[str, str]:
        ensemble = {} if self.templates is None else {"templates": json.dumps(self.templates)}
        return {
            "format": FORMAT,
            "clipfit_version": __version__,
            "model": self.model,
            "pretrained": self.pretrained,
            "method": self.method,
            "method_options": json.dumps(self.method_options),
            "classnames": json.dumps(self.classnames),
            "template": self.template,
            "weights": self.weights,
            "precision": self.precision,
            **ensemble,
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: Path) -> AdapterInfo:
        if "format" not in meta:
            raise ClipFitError(
                f"{path}: not a clipfit adapter file (its metadata has no 'format', expected {FORMAT!r})"
            )
        if meta["format"] not in READABLE_FORMATS:
            raise ClipFitError(f"{path}: not a clipfit adapter file this version reads (format {meta['format']!r}, "
                               f"expected one of {', '.join(READABLE_FORMATS)})")
        try:
            return cls(
                model=meta["model"],
                pretrained=meta["pretrained"],
                method=meta["method"],
                method_options=json.loads(meta["method_options"]),
                classnames=json.loads(meta["classnames"]),
                template=meta["template"],
                weights=meta.get("weights", ""),
                precision=meta.get("precision", "fp32"),
                templates=json.loads(meta["templates"]) if "templates" in meta else None,
            )
        except (KeyError, json.JSONDecodeError) as err:
            raise ClipFitError(f"{path}: adapter metadata is malformed ({err})") from err


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of named tensors, in name order: for each, the line `["<name>", "<dtype>", [<shape>]]\n`
    (JSON, dtype as torch names it: "torch.float32") followed by its elements' bytes in row-major order and
    the machine's byte order (little-endian, as safetensors stores them). The names, dtypes and shapes are
    hashed too, so a renamed or reshaped tensor does not keep its checksum."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode() + b"\n")
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def save_adapter(path: Path, tensors: dict[str, torch.Tensor], info: AdapterInfo) -> None:
    """Write `tensors` (any device and float dtype; stored as float32 on the CPU) as safetensors at `path`,
    with `info` and the tensors' `tensors_sha256` in the metadata. The write is atomic."""
    cpu = {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in tensors.items()}
    metadata = {**info.to_metadata(), CHECKSUM_FIELD: tensors_sha256(cpu)}
    atomic_write(path, lambda tmp: save_file(cpu, str(tmp), metadata=metadata))


def read_adapter(path: Path) -> tuple[dict[str, torch.Tensor], AdapterInfo]:
    """The tensors and the metadata of the adapter file at `path`. Raises ClipFitError naming the file when
    it is missing, unreadable, not a clipfit adapter, or when its tensors do not match the checksum recorded
    when it was saved (files written before checksums were recorded load unchecked)."""
    path = Path(path)
    if not path.is_file():
        raise ClipFitError(f"adapter file not found: {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ClipFitError(f"{path}: unreadable adapter file ({err})") from err
    info = AdapterInfo.from_metadata(meta, path)
    if CHECKSUM_FIELD in meta and tensors_sha256(tensors) != meta[CHECKSUM_FIELD]:
        raise ClipFitError(f"{path}: tensor data does not match the checksum recorded when it was saved "
                           "(the file is corrupted or was modified)")
    return tensors, info
