"""Adapter files: the tuned tensors only, as safetensors, with the metadata that names the base model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .errors import ClipFitError
from .files import atomic_write

FORMAT = "clipfit-adapter/1"


@dataclass
class AdapterInfo:
    model: str
    pretrained: str
    method: str
    method_options: dict
    classnames: list[str]
    template: str
    weights: str = ""  # backbone.weights_fingerprint of the base weights it was trained on

    def to_metadata(self) -> dict[str, str]:
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
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: Path) -> AdapterInfo:
        if meta.get("format") != FORMAT:
            raise ClipFitError(f"{path}: not a clipfit adapter file (format {meta.get('format')!r}, expected {FORMAT!r})")
        try:
            return cls(
                model=meta["model"],
                pretrained=meta["pretrained"],
                method=meta["method"],
                method_options=json.loads(meta["method_options"]),
                classnames=json.loads(meta["classnames"]),
                template=meta["template"],
                weights=meta.get("weights", ""),
            )
        except (KeyError, json.JSONDecodeError) as err:
            raise ClipFitError(f"{path}: adapter metadata is malformed ({err})") from err


def save_adapter(path: Path, tensors: dict[str, torch.Tensor], info: AdapterInfo) -> None:
    cpu = {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in tensors.items()}
    atomic_write(path, lambda tmp: save_file(cpu, str(tmp), metadata=info.to_metadata()))


def load_adapter(path: Path) -> tuple[dict[str, torch.Tensor], AdapterInfo]:
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
    return tensors, AdapterInfo.from_metadata(meta, path)
