"""Load any open_clip CLIP (pretrained tag, local checkpoint, built-in weights or random init) and
name the parts that parameter-efficient methods select by structure."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from .errors import BackboneError
from .text_encoding import encode_prompts, text_tower_or_none

PACKAGE_DIR = Path(__file__).parent
MODEL_CONFIG_DIR = PACKAGE_DIR / "model_configs"
WEIGHTS_DIR = PACKAGE_DIR / "weights"

# Weights that ship inside the package, loaded with `--pretrained builtin`.
BUILTIN_WEIGHTS = {"mini-clip": WEIGHTS_DIR / "mini-clip.safetensors"}

RANDOM_INIT = "none"
BUILTIN = "builtin"
# Random init is seeded so that a run on a random-init model can be rebuilt bit for bit by eval/predict.
RANDOM_INIT_SEED = 0

open_clip.add_model_config(MODEL_CONFIG_DIR)


@dataclass
class Preprocess:
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"


@dataclass
class Backbone:
    """A CLIP model with its tokenizer and preprocessing, and the name it was built from."""

    model: nn.Module
    tokenizer: object
    preprocess: Preprocess
    model_name: str
    pretrained: str

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts).to(self.device)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(images), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return encode_text(self.model, tokens)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp()


def text_tower(model: nn.Module) -> nn.Module:
    """The module that holds the text transformer: the CLIP itself, or `model.text` for custom-text CLIPs."""
    tower = text_tower_or_none(model)
    if tower is None:
        raise BackboneError(
            f"{type(model).__name__}: text tower is not an open_clip transformer (Hugging Face text towers are not supported)"
        )
    return tower


def text_mlp_output_projections(model: nn.Module) -> list[nn.Linear]:
    """The output projection (last Linear) of the MLP in every text transformer block."""
    projections = []
    for block in text_tower(model).transformer.resblocks:
        linears = [m for m in block.mlp.modules() if isinstance(m, nn.Linear)]
        projections.append(linears[-1])
    return projections


def image_layernorms(model: nn.Module) -> list[nn.LayerNorm]:
    """Every LayerNorm of the image tower (none in a ResNet)."""
    return [m for m in model.visual.modules() if isinstance(m, nn.LayerNorm)]


def _supports_truncated_text(tower: nn.Module) -> bool:
    return getattr(tower, "cls_emb", None) is None and getattr(tower, "pool_type", getattr(tower, "text_pool_type", None)) == "argmax"


def encode_text(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Normalised text features of class prompts, equal to the full-length `model.encode_text` to float
    tolerance: see `clipfit.text_encoding` (positions after the last end-of-text token are skipped, the
    prefix shared by every prompt is computed once, the suffixes are packed without padding)."""
    return encode_prompts(model, tokens)


def list_models() -> list[str]:
    return open_clip.list_models()


def _looks_like_path(pretrained: str) -> bool:
    return os.sep in pretrained or pretrained.startswith((".", "~")) or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))


def _hub_reachable(host: str, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _resolve_tag(model_name: str, tag: str, cache_dir: str | None) -> tuple[str, dict]:
    """A local file for an open_clip pretrained tag: from the cache, or downloaded if the hub is reachable.

    open_clip itself retries an unreachable hub for most of a minute before failing with a stack trace;
    we look in the local cache first and probe the host once, so offline use fails at once in one line.
    """
    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
        raise BackboneError(
            f"unknown pretrained tag {tag!r} for model {model_name!r} (known tags: {known}; "
            f"or pass a checkpoint file path, '{BUILTIN}' or '{RANDOM_INIT}')"
        )
    how_to = (
        "pass a local checkpoint file instead: --pretrained /path/to/open_clip_pytorch_model.bin "
        "(or put it in the Hugging Face cache, HF_HOME)"
    )
    if cfg.get("hf_hub"):
        import huggingface_hub
        from huggingface_hub.errors import LocalEntryNotFoundError

        repo_id, filename = os.path.split(cfg["hf_hub"])
        filenames = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for filename in filenames:
            try:
                return huggingface_hub.hf_hub_download(repo_id, filename, cache_dir=cache_dir, local_files_only=True), cfg
            except (LocalEntryNotFoundError, FileNotFoundError):
                continue
        if not _hub_reachable("huggingface.co"):
            raise BackboneError(
                f"pretrained weights {model_name}/{tag} are not cached and huggingface.co is unreachable (offline?); {how_to}"
            )
        try:
            return huggingface_hub.hf_hub_download(repo_id, filenames[-1], cache_dir=cache_dir), cfg
        except Exception as err:  # any hub failure becomes one line naming the weights
            raise BackboneError(f"could not download {model_name}/{tag} from {repo_id}: {err}; {how_to}") from err
    host = urlparse(cfg.get("url", "")).hostname or ""
    if not _hub_reachable(host):
        raise BackboneError(f"pretrained weights {model_name}/{tag} need a download from {host or 'an unknown host'}, which is unreachable; {how_to}")
    return open_clip.download_pretrained(cfg, cache_dir=cache_dir), cfg


def _load_state_file(model: nn.Module, path: Path) -> None:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
        expected = model.state_dict()
        unexpected, missing = sorted(set(state) - set(expected)), sorted(set(expected) - set(state))
        if unexpected or missing:
            raise ValueError(f"tensor names do not match (unexpected: {unexpected[:3]}, missing: {missing[:3]})")
        model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    else:
        open_clip.load_checkpoint(model, str(path))


@contextlib.contextmanager
def _quiet_random_init_warning():
    """open_clip warns that the model is randomly initialised; we load the weights ourselves right after."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def load_backbone(model_name: str, pretrained: str | None = RANDOM_INIT, device: str | torch.device = "cpu", cache_dir: str | None = None) -> Backbone:
    """Build a CLIP from an open_clip architecture name and `pretrained`: an open_clip tag (downloaded or
    cached), a local checkpoint file, 'builtin' (weights shipped with this package) or 'none' (random init)."""
    pretrained = pretrained or RANDOM_INIT
    if model_name not in open_clip.list_models():
        raise BackboneError(f"unknown model {model_name!r}; see `clipfit models` or open_clip.list_models()")
    force_quick_gelu = False
    weights: Path | None = None
    if pretrained == BUILTIN:
        if model_name not in BUILTIN_WEIGHTS:
            raise BackboneError(f"no built-in weights for {model_name!r} (built-in: {', '.join(BUILTIN_WEIGHTS)})")
        weights = BUILTIN_WEIGHTS[model_name]
        if not weights.is_file():
            raise BackboneError(f"built-in weights file is missing: {weights}")
    elif pretrained != RANDOM_INIT:
        if _looks_like_path(pretrained) or Path(pretrained).expanduser().is_file():
            weights = Path(pretrained).expanduser()
            if not weights.is_file():
                raise BackboneError(f"checkpoint file not found: {weights}")
        else:
            local, tag_cfg = _resolve_tag(model_name, pretrained, cache_dir)
            weights = Path(local)
            force_quick_gelu = bool(tag_cfg.get("quick_gelu", False)) and "quickgelu" not in model_name
    with torch.random.fork_rng(devices=[]), _quiet_random_init_warning():
        torch.manual_seed(RANDOM_INIT_SEED)
        model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=force_quick_gelu)
    if weights is not None:
        try:
            _load_state_file(model, weights)
        except (RuntimeError, KeyError, ValueError, OSError) as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise BackboneError(f"cannot load checkpoint {weights} into {model_name}: {first_line}") from err
    model = model.to(device).eval()
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg["size"]
    preprocess = Preprocess(
        image_size=size if isinstance(size, int) else size[0],
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=cfg.get("interpolation", "bicubic"),
        resize_mode=cfg.get("resize_mode", "shortest"),
    )
    return Backbone(model=model, tokenizer=open_clip.get_tokenizer(model_name), preprocess=preprocess, model_name=model_name, pretrained=pretrained)


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def weights_fingerprint(model_name: str, pretrained: str | None) -> str:
    """What identifies the base weights a run starts from: the SHA-256 of the file for built-in and local
    weights (the same name can hold other weights after an upgrade or a copy), the tag for open_clip's
    released weights, the seed for random init."""
    pretrained = pretrained or RANDOM_INIT
    if pretrained == RANDOM_INIT:
        return f"random-init:{RANDOM_INIT_SEED}"
    if pretrained == BUILTIN:
        path = BUILTIN_WEIGHTS.get(model_name)
    elif _looks_like_path(pretrained) or Path(pretrained).expanduser().is_file():
        path = Path(pretrained).expanduser()
    else:
        return f"open_clip:{model_name}:{pretrained}"
    if path is None or not path.is_file():
        raise BackboneError(f"cannot fingerprint the weights of {model_name} {pretrained!r}: no such file {path}")
    stat = path.stat()
    return "sha256:" + _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def build_skeleton(model_name: str) -> nn.Module:
    """The architecture without allocating weights (meta device): enough to count parameters."""
    if model_name not in open_clip.list_models():
        raise BackboneError(f"unknown model {model_name!r}; see open_clip.list_models()")
    with _quiet_random_init_warning():
        return open_clip.create_model(model_name, pretrained=None, device="meta")
