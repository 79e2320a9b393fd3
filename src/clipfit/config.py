"""Run configuration: one dataclass whose defaults reproduce the paper, written next to every run."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .engine import OptimConfig
from .errors import ClipFitError


# Training-image caches. "decoded" (default, exact): decoded full-resolution images are kept within
# `image_cache_mb`, so crops and flips are the reference transform's, bit for bit. "resized-approximate":
# images are kept resized to the model's input size on the short side, and random crops are cut from
# that instead of the full-resolution file (faster, less memory, not the reference's augmentation).
# "none": decode every image on every read.
IMAGE_CACHES = ("decoded", "resized-approximate", "none")
# Fields of configs written by earlier versions, and how they read today.
LEGACY_FIELDS = {"cache_images": lambda on: {"image_cache": "resized-approximate" if on else "none"}}


@dataclass
class RunConfig:
    method: str = "clipfit"
    method_options: dict = field(default_factory=dict)
    model: str = "ViT-B-16"
    pretrained: str = "openai"
    dataset: str = "imagefolder"
    data_root: str = "."
    protocol: str = "few-shot"
    shots: int = 16
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    # None: the dataset's own template (NOTES.md).
    template: str | None = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    crop_scale: tuple[float, float] = (0.08, 1.0)
    # Random horizontal flips in training; None: the paper's flips, unless the dataset is not mirror-invariant.
    hflip: bool | None = None
    eval_batch_size: int = 100
    # How training images are kept between epochs (see IMAGE_CACHES and data.ImageDataset).
    image_cache: str = "decoded"
    # Memory budget of the "decoded" cache, in MiB (per data-loading process); images past it are
    # decoded on every read. A 500x375 photo takes 0.72 MiB (PIL keeps 4 bytes a pixel).
    image_cache_mb: int = 4096
    # "bf16": autocast the forward passes to bfloat16 (trainable parameters and optimiser state stay fp32).
    precision: str = "fp32"
    num_workers: int = 0
    device: str = "auto"
    # None: runs/<dataset>-<protocol>-<shots>shot-<method>
    out: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> RunConfig:
        return _from_dict(cls, data, source)

    @classmethod
    def from_file(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ClipFitError(f"config file not found: {path}") from None
        except json.JSONDecodeError as err:
            raise ClipFitError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise ClipFitError(f"{path}: expected a JSON object of config fields")
        return cls.from_dict(data, str(path))


def _from_dict(cls, data: dict, source: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if cls is RunConfig:
        for name, translate in LEGACY_FIELDS.items():
            if name in data:
                data = {**{k: v for k, v in data.items() if k != name}, **translate(data[name])}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ClipFitError(f"{source}: unknown field(s) {', '.join(unknown)} (known: {', '.join(fields)})")
    values = {}
    for name, value in data.items():
        nested = fields[name].type
        if name == "optim":
            if not isinstance(value, dict):
                raise ClipFitError(f"{source}: field 'optim' must be an object")
            value = _from_dict(OptimConfig, value, f"{source}: optim")
        elif name == "crop_scale":
            value = tuple(value)
        del nested
        values[name] = value
    return cls(**values)
