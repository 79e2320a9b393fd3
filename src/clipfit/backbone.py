"""Load any open_clip CLIP (pretrained tag, local checkpoint, built-in weights or random init) and
name the parts that parameter-efficient methods select by structure."""

from __future__ import annotations

import ast
import contextlib
import difflib
import functools
import hashlib
import logging
import os
import pickle
import re
import socket
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import open_clip
import torch
from safetensors import SafetensorError
from torch import nn

from . import hf_checkpoint
from .errors import BackboneError
from .files import file_sha256
from .plugins import load_plugins
from .registry import Registry
from .text_encoding import encode_prompts, text_tower_or_none

# Weights that ship inside an installed package, loaded with `--pretrained builtin`, by architecture name;
# a plugin registers them (`register_builtin_weights`; the mini world's mini CLIP is one).
BUILTIN_WEIGHTS: Registry[Path] = Registry("built-in weights", error=BackboneError)

RANDOM_INIT = "none"
BUILTIN = "builtin"
# Random init is seeded so that a run on a random-init model can be rebuilt bit for bit by eval/predict.
RANDOM_INIT_SEED = 0


def register_builtin_weights(model_name: str, weights: Path, model_config_dir: Path | None = None) -> None:
    """Make ``--model model_name --pretrained builtin`` load the safetensors file ``weights``; with
    ``model_config_dir``, open_clip learns the architectures whose JSON configs lie there first
    (`open_clip.add_model_config`). A name registered with another file raises `ValueError`."""
    if model_config_dir is not None:
        open_clip.add_model_config(model_config_dir)
    BUILTIN_WEIGHTS.register(model_name, Path(weights))


def architectures() -> list[str]:
    """Every architecture name open_clip can build, those the installed plugins add included (not
    `hf_checkpoint.HF_MODEL`, which names a Hugging Face folder's architecture even where an exported file
    registered one under it)."""
    load_plugins()
    return [name for name in open_clip.list_models() if name != hf_checkpoint.HF_MODEL]


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
            f"{type(model).__name__}: text tower is not an open_clip transformer "
            "(Hugging Face text towers are not supported)"
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


def text_mlp_linears(model: nn.Module) -> list[nn.Linear]:
    """Both Linear layers of the MLP in every text transformer block (BitFit (c): their biases)."""
    return [
        m for block in text_tower(model).transformer.resblocks for m in block.mlp.modules() if isinstance(m, nn.Linear)
    ]


def _block_bias_owners(blocks) -> list[tuple[nn.Module, str]]:
    """(module, attribute) of every bias inside transformer blocks: attention's packed input projection
    (`in_proj_bias`), every Linear's and LayerNorm's `bias`."""
    owners = []
    for block in blocks:
        for module in block.modules():
            for attr in ("in_proj_bias", "bias"):
                if isinstance(getattr(module, attr, None), nn.Parameter):
                    owners.append((module, attr))
    return owners


def text_block_biases(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every bias inside the text transformer's blocks (BitFit (b), CLIPFit Table 5: 67,584 for ViT-B/16,
    which counts the blocks' attention, MLP and LayerNorm biases and not `ln_final`)."""
    return _block_bias_owners(text_tower(model).transformer.resblocks)


def image_block_biases(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every bias inside the image tower's transformer blocks (with the text's: BitFit (a), 168,960 for
    ViT-B/16, Table 5's 0.17M); a ResNet image tower has its BatchNorm and attention-pool biases."""
    visual = model.visual
    blocks = visual.transformer.resblocks if hasattr(getattr(visual, "transformer", None), "resblocks") else [visual]
    return _block_bias_owners(blocks)


def image_feature_dim(model: nn.Module) -> int:
    """Size of the image tower's output feature, the joint embedding (512 for ViT-B/16): open_clip's towers
    record it as `output_dim`; a timm tower (EVA, ConvNeXt, SigLIP's) does not, and its feature has the
    size of the text tower's (the two are compared by cosine)."""
    dim = getattr(model.visual, "output_dim", None)
    if isinstance(dim, int):
        return dim
    tower = text_tower(model)
    projection = tower.text_projection
    if isinstance(projection, nn.Linear):
        return int(projection.out_features)
    if isinstance(projection, torch.Tensor):
        return int(projection.shape[-1])
    return int(tower.ln_final.normalized_shape[-1])  # no projection: the text width is the embedding


def vision_width(model: nn.Module) -> int:
    """Width of the image transformer's tokens (768 for ViT-B/16); `BackboneError` for a ResNet tower."""
    visual = model.visual
    if not _is_prompt_ready_vit(visual):
        kind = "a timm tower: EVA, ConvNeXt, SigLIP" if type(visual).__name__ == "TimmModel" else "not a ViT"
        raise BackboneError(
            f"{type(visual).__name__} ({kind}): visual prompts need an open_clip VisionTransformer with "
            "class-token pooling"
        )
    return int(visual.class_embedding.shape[-1])


def _is_prompt_ready_vit(visual: nn.Module) -> bool:
    return (
        isinstance(visual, open_clip.transformer.VisionTransformer)
        and getattr(visual, "attn_pool", None) is None
        and getattr(visual, "pool_type", "tok") == "tok"
        and not getattr(visual, "final_ln_after_pool", False)
        and getattr(visual.transformer, "batch_first", True)
    )


def _embed_patches(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The ViT's token sequence [batch, 1 + patches, width] before `ln_pre`, as open_clip builds it: patch
    embeddings after the class token, the positional embedding added, patch dropout applied (which keeps
    the class token first). `BackboneError` for towers that are not such a ViT."""
    visual = model.visual
    vision_width(model)  # checks the tower
    x = visual.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1), x], dim=1)
    x = x + visual.positional_embedding.to(x.dtype)
    return visual.patch_dropout(x)


def encode_image_prompted(model: nn.Module, images: torch.Tensor, prompts: list[torch.Tensor | None]) -> torch.Tensor:
    """Unnormalised image features [batch, embed] of an open_clip ViT whose token sequence carries learned
    prompt tokens, appended after the patch tokens (MaPLe, `clip/model.py` of its official code).

    ``prompts[0]`` [M, width] is appended to [class token, patches] after the positional embedding and
    before `ln_pre` (positions without a positional embedding); ``prompts[i]`` (i >= 1, when given)
    replaces the last M tokens as they enter block i; blocks past the list carry them on. The feature is
    the class token's, as open_clip pools it. `BackboneError` for towers that pool otherwise.
    """
    visual = model.visual
    x = _embed_patches(model, images)
    count = prompts[0].shape[0]
    x = torch.cat([x, prompts[0].to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)
    x = visual.ln_pre(x)
    for i, block in enumerate(visual.transformer.resblocks):
        if 0 < i < len(prompts) and prompts[i] is not None:
            x = torch.cat([x[:, :-count], prompts[i].to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)
        x = block(x)
    pooled, _ = visual._pool(x)
    return pooled @ visual.proj if visual.proj is not None else pooled


def encode_image_vpt(model: nn.Module, images: torch.Tensor, prompts: list[torch.Tensor | None]) -> torch.Tensor:
    """Unnormalised image features [batch, embed] of an open_clip ViT with N learned prompt tokens inserted
    right after the class token (VPT, Jia et al. 2022, as the PEFT-for-CLIP study's `Embeddings.py` and
    `VisionPromptCLIP.py` place them in CLIP's tower).

    The patches are embedded, the class token prepended, the positional embedding added and `ln_pre`
    applied as open_clip does; then ``prompts[0]`` [N, width] (or [batch, N, width]: one per image) goes
    between the class token and the patches, with no positional embedding and no `ln_pre`. ``prompts[i]``
    (i >= 1, when given) replaces the N prompt outputs of block i-1 as they enter block i (VPT-deep); blocks
    past the list carry them on (VPT-shallow passes one entry). N = 0 is open_clip's own forward. The
    feature is the class token's through `ln_post` and the projection, as open_clip pools it.
    `BackboneError` for towers that pool otherwise.
    """
    visual = model.visual
    x = visual.ln_pre(_embed_patches(model, images))
    count = prompts[0].shape[-2]
    x = torch.cat([x[:, :1], prompts[0].to(x.dtype).expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
    for i, block in enumerate(visual.transformer.resblocks):
        if 0 < i < len(prompts) and prompts[i] is not None:
            if prompts[i].shape[-2] != count:
                raise ValueError(f"block {i} has {prompts[i].shape[-2]} prompt tokens, the input {count}")
            x = torch.cat([x[:, :1], prompts[i].to(x.dtype).expand(x.shape[0], -1, -1), x[:, 1 + count:]], dim=1)
        x = block(x)
    pooled, _ = visual._pool(x)
    return pooled @ visual.proj if visual.proj is not None else pooled


def encode_text(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Normalised text features of class prompts, equal to the full-length `model.encode_text` to float
    tolerance: see `clipfit.text_encoding` (positions after the last end-of-text token are skipped, the
    prefix shared by every prompt is computed once, the suffixes are packed without padding)."""
    return encode_prompts(model, tokens)


def check_model_name(model_name: str) -> None:
    """`BackboneError` naming close matches unless `model_name` is an open_clip architecture."""
    if model_name not in architectures():
        raise _unknown_model(model_name)


def hf_folder(pretrained: str | None) -> Path | None:
    """The Hugging Face `CLIPModel` folder ``pretrained`` names (`clipfit.hf_checkpoint.hf_folder`), or None
    (a tag, a checkpoint file, 'builtin', 'none')."""
    if pretrained in (None, RANDOM_INIT, BUILTIN):
        return None
    return hf_checkpoint.hf_folder(pretrained)


def _check_no_hf_model(model_name: str, pretrained: str | None) -> None:
    """`BackboneError` for `hf_checkpoint.HF_MODEL` without a Hugging Face folder, naming the folder given."""
    if model_name == hf_checkpoint.HF_MODEL and pretrained and Path(pretrained).expanduser().is_dir():
        raise BackboneError(f"--pretrained {pretrained}: no {hf_checkpoint.CONFIG_FILE} in it, so not a Hugging Face "
                            f"CLIPModel folder, which model {model_name!r} takes its architecture from")


def check_backbone_names(model_name: str, pretrained: str | None) -> None:
    """What can be checked of a backbone before anything is loaded, in one `BackboneError` line: an open_clip
    architecture name; or, with a Hugging Face folder as ``pretrained``, its config.json (a CLIPModel that
    open_clip can build), its weight files' presence, and ``model_name`` either `hf_checkpoint.HF_MODEL` or
    an open_clip architecture that builds the same model."""
    folder = hf_folder(pretrained)
    if folder is None:
        _check_no_hf_model(model_name, pretrained)
        check_model_name(model_name)
        return
    hf_checkpoint.check_model_name(model_name, hf_checkpoint.architecture(folder))
    hf_checkpoint.weight_files(folder)


def _unknown_model(model_name: str) -> BackboneError:
    if model_name == hf_checkpoint.HF_MODEL:
        return BackboneError(f"model {model_name!r} is the architecture of a Hugging Face CLIPModel folder given as "
                             "--pretrained; give the folder (config.json and model.safetensors or pytorch_model.bin)")
    close = difflib.get_close_matches(model_name, architectures(), n=5)
    hint = f" (close matches: {', '.join(close)})" if close else ""
    return BackboneError(
        f"unknown model {model_name!r}{hint}; `clipfit models` lists them"
    )


def _builtin_weights(model_name: str) -> Path:
    if model_name not in BUILTIN_WEIGHTS:
        known = ", ".join(BUILTIN_WEIGHTS) or "none: is the clipfit distribution installed with its mini world?"
        raise BackboneError(f"no built-in weights for {model_name!r} (built-in: {known})")
    return BUILTIN_WEIGHTS[model_name]


def _looks_like_path(pretrained: str) -> bool:
    return (
        os.sep in pretrained
        or pretrained.startswith((".", "~"))
        or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))
    )


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
        known = ", ".join(open_clip.list_pretrained_tags_by_model(model_name))
        tags = f"known tags: {known}" if known else f"open_clip has no pretrained tags for {model_name}"
        raise BackboneError(
            f"unknown pretrained tag {tag!r} for model {model_name!r} ({tags}; "
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
                local = huggingface_hub.hf_hub_download(repo_id, filename, cache_dir=cache_dir, local_files_only=True)
                return local, cfg
            except (LocalEntryNotFoundError, FileNotFoundError):
                continue
        if not _hub_reachable("huggingface.co"):
            raise BackboneError(
                f"pretrained weights {model_name}/{tag} are not cached and huggingface.co is unreachable "
                f"(offline?); {how_to}"
            )
        try:
            return huggingface_hub.hf_hub_download(repo_id, filenames[-1], cache_dir=cache_dir), cfg
        except Exception as err:  # any hub failure becomes one line naming the weights
            raise BackboneError(f"could not download {model_name}/{tag} from {repo_id}: {err}; {how_to}") from err
    host = urlparse(cfg.get("url", "")).hostname or ""
    if not _hub_reachable(host):
        raise BackboneError(f"pretrained weights {model_name}/{tag} need a download from "
                            f"{host or 'an unknown host'}, which is unreachable; {how_to}")
    return open_clip.download_pretrained(cfg, cache_dir=cache_dir), cfg


# The storage classes a pickled tensor names, and the dtype of their elements (torch.save and TorchScript
# archives both name legacy typed storages: `torch.FloatStorage`, ...).
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
# TorchScript wraps typed lists and dicts in these; each returns its first argument (torch/jit/_pickle.py).
_TORCHSCRIPT_TYPE_TAGS = {"build_intlist", "build_doublelist", "build_boollist", "build_tensorlist", "restore_type_tag"}
# State-dict entries of OpenAI's archives that are not weights (OpenAI's clip.model.build_model drops them too).
_OPENAI_EXTRA_ENTRIES = ("input_resolution", "context_length", "vocab_size")


def _first_argument(value, *_):
    return value


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_) -> torch.Tensor:
    # as_strided checks that the view fits in the storage, so a forged size or offset cannot read past it.
    return torch.as_strided(storage, size, stride, offset)


class _ArchivedObject:
    """A TorchScript object of an archive's data.pkl, reduced to its attributes: no TorchScript code is
    attached, none runs. `type_name` is its TorchScript class (`__torch__.clip.model.CLIP`)."""

    type_name = ""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(
                f"{self.type_name} is pickled with a custom state, not as a module's attributes"
            )
        self.attributes = state


class _TorchScriptUnpickler(pickle.Unpickler):
    """Reads a TorchScript archive's data.pkl with a fixed allowlist of globals (the pickle documentation's
    "Restricting Globals"): any other global is refused before it can be called or built."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix = archive, prefix
        self.types: dict[str, type] = {}
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str):
        if module.split(".")[0] == "__torch__":
            type_name = f"{module}.{name}"
            if type_name not in self.types:
                self.types[type_name] = type("ArchivedObject", (_ArchivedObject,), {"type_name": type_name})
            return self.types[type_name]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch.jit._pickle" and name in _TORCHSCRIPT_TYPE_TAGS:
            return _first_argument
        raise pickle.UnpicklingError(
            f"global {module}.{name} is not allowed (only tensors and module attributes are read)"
        )

    def persistent_load(self, pid):
        # ('storage', dtype, record key, device it was saved from, number of elements). The device is
        # ignored (an archive saved from a GPU names cuda): everything loads on the CPU.
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)
                and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise pickle.UnpicklingError(f"unexpected persistent id {str(pid)[:80]}")
        _, dtype, key, _, numel = pid
        if key not in self.storages:
            record = f"{self.prefix}/data/{key}"
            size = self.archive.getinfo(record).file_size
            if size != numel * dtype.itemsize:
                raise pickle.UnpicklingError(f"record {record} holds {size} bytes, not {numel} {dtype} elements")
            data = bytearray(self.archive.read(record))
            self.storages[key] = torch.frombuffer(data, dtype=dtype) if numel else torch.empty(0, dtype=dtype)
        return self.storages[key]


def _torchscript_prefix(path: Path) -> str | None:
    """The folder that holds a TorchScript archive's records (`ViT-B-32` in OpenAI's ViT-B-32.pt), or None
    when `path` is not one. Like torch.load, a zip with a constants.pkl record is taken to be TorchScript."""
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
    prefixes = [name.split("/")[0] for name in names if re.fullmatch(r"[^/]+/constants\.pkl", name)]
    return next((p for p in prefixes if f"{p}/data.pkl" in names), None)


def _declared_tensors(archive: zipfile.ZipFile, prefix: str, type_name: str) -> set[str]:
    """The parameters and buffers a TorchScript class declares (`__parameters__ = ["weight", "bias", ]` in
    code/<its module path>.py). The source is parsed with `ast` as text, never compiled or run."""
    module, _, class_name = type_name.rpartition(".")
    tree = ast.parse(archive.read(f"{prefix}/code/{module.replace('.', '/')}.py"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            declared: set[str] = set()
            for statement in node.body:
                if isinstance(statement, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id in ("__parameters__", "__buffers__") for t in statement.targets
                ):
                    declared.update(ast.literal_eval(statement.value))
            return declared
    raise ValueError(f"the archive's code does not define {type_name}")


def _read_torchscript_state_dict(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The state dict of the module in a TorchScript archive, read without running any of the archive.

    Returns {dotted name: tensor} on the CPU, in the dtypes of the archive (float16 in OpenAI's), holding
    what `torch.jit.load(path).state_dict()` holds: every parameter and buffer of every submodule.
    Raises ValueError naming what is wrong (a refused global, a missing record, a tensor out of bounds).

    Why not torch's own loaders: `torch.load(weights_only=True)` refuses TorchScript archives, and
    `torch.jit.load` (what `torch.load` dispatches to otherwise) compiles the archive's code/ and runs any
    `__setstate__` it defines while loading, in a C++ deserializer; PyTorch's security policy (SECURITY.md,
    "TorchScript models") says to treat TorchScript models "the same way as locally executable code from
    an unknown source".

    What is done instead: the archive is a zip (torch/csrc/jit/docs/serialization.md): `<prefix>/data.pkl`
    pickles the module tree, `<prefix>/data/<n>` holds each storage's raw little-endian bytes, and
    `<prefix>/code/` the TorchScript source. It is read with Python's zipfile; data.pkl goes through
    `_TorchScriptUnpickler`, whose globals are a fixed allowlist of our own inert callables (a tensor view
    of a storage, a dtype, an OrderedDict, an attribute holder for each `__torch__` class), so nothing the
    file names is imported or called; tensors are views of bytearrays of the data records, bounds-checked
    by `torch.as_strided`; and the code/ files are parsed as text (`ast`) only to learn which attributes
    are parameters and buffers.
    """
    with zipfile.ZipFile(path) as archive:
        # Archives from before torch recorded the byte order have no byteorder record; they are read as little-endian.
        byteorder = f"{prefix}/byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder) != b"little":
            raise ValueError("its tensors are stored big-endian, which is not supported")
        try:
            with archive.open(f"{prefix}/data.pkl") as pickled:
                root = _TorchScriptUnpickler(pickled, archive, prefix).load()
            if not isinstance(root, _ArchivedObject):
                raise ValueError(f"data.pkl holds a {type(root).__name__}, not a TorchScript module")
            state: dict[str, torch.Tensor] = {}
            declared: dict[str, set[str]] = {}
            pending, seen = [("", root)], set()
            while pending:
                name_prefix, obj = pending.pop()
                if id(obj) in seen:
                    continue
                seen.add(id(obj))
                if obj.type_name not in declared:
                    declared[obj.type_name] = _declared_tensors(archive, prefix, obj.type_name)
                for name, value in obj.attributes.items():
                    if isinstance(value, _ArchivedObject):
                        pending.append((f"{name_prefix}{name}.", value))
                    elif name in declared[obj.type_name] and value is not None:
                        if not isinstance(value, torch.Tensor):
                            raise ValueError(
                                f"{name_prefix}{name} is declared a tensor but holds a {type(value).__name__}"
                            )
                        state[f"{name_prefix}{name}"] = value
        # What a malformed archive raises: a refused global or bad opcode, a truncated pickle, a missing record,
        # a malformed declaration, an out-of-bounds view, an argument of the wrong type, an object never built.
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, RuntimeError, TypeError, AttributeError,
                SyntaxError, zipfile.BadZipFile) as err:
            raise ValueError(f"unreadable TorchScript archive ({_one_line(err)})") from err
    return state


def _one_line(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    if len(text) > limit:
        text = text[:limit] + "..."
    return text or type(err).__name__


def _some(names: list[str], shown: int = 3) -> str:
    """'a, b, c and 12 more' (or 'none')."""
    if not names:
        return "none"
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _load_exact(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load `state` into `model` when its names and shapes are the model's own, casting to the model's dtypes."""
    expected = model.state_dict()
    unexpected, missing = sorted(set(state) - set(expected)), sorted(set(expected) - set(state))
    if unexpected or missing:
        raise ValueError(f"tensor names do not match (unexpected: {_some(unexpected)}; missing: {_some(missing)})")
    wrong = [
        f"{k} {tuple(v.shape)}, expected {tuple(expected[k].shape)}"
        for k, v in sorted(state.items())
        if v.shape != expected[k].shape
    ]
    if wrong:
        raise ValueError(f"tensor shapes do not match: {'; '.join(wrong[:3])}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def _check_state_dict_pickle(path: Path) -> None:
    """Raise ValueError unless `path` is a torch.save file (zip or legacy pickle) whose pickle
    `torch.load(weights_only=True)` accepts and that holds a state dict: a non-empty dict of tensors, or
    one under 'state_dict' (open_clip's training checkpoints)."""
    is_zip = zipfile.is_zipfile(path)
    with open(path, "rb") as f:
        first = f.read(1)
    if not is_zip and first != pickle.PROTO:
        raise ValueError("not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    try:
        # mmap keeps this read to the pickle: open_clip reads the tensors when it loads the file.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    # torch.load fails in many ways (pickle, zip, EOF, key errors) on bytes that are not a checkpoint.
    except Exception as err:
        refused = re.search(r"WeightsUnpickler error: (.*)", str(err))
        if refused:
            reason = refused.group(1).split(" Please use")[0]
            raise ValueError(
                f"its pickle holds more than tensors, which torch.load(weights_only=True) refuses: {reason}"
            ) from err
        raise ValueError(f"not a readable PyTorch checkpoint ({_one_line(err)})") from err
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    if not isinstance(state, dict):
        raise ValueError(f"it holds a {type(state).__name__}, not a state dict (a dict of tensors)")
    if not state:
        raise ValueError("it holds an empty state dict")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        entry = not_tensors[0]
        raise ValueError(f"its entry {str(entry)[:80]!r} is a {type(state[entry]).__name__}, not a tensor")


def _model_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's weights among the tensors of a flat checkpoint file (safetensors), found where open_clip's
    `load_checkpoint` finds them in a torch.save file: under 'state_dict' when it is a training checkpoint
    (flattened, its entries are named 'state_dict.<name>' beside the optimizer's), and without the 'module.'
    prefix DistributedDataParallel puts on every name."""
    nested = {k[len("state_dict."):]: v for k, v in state.items() if k.startswith("state_dict.")}
    if nested:
        state = nested
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _as_open_clip_converts(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` changed as open_clip's `load_checkpoint` changes a torch.save file's state dict before loading
    it, so that a container holds what another may: third-party layouts (MobileCLIP) converted, the old text
    layout moved under `text.`, `logit_scale`/`logit_bias` reshaped to the model's, a zero `logit_bias` for a
    SigLIP model, a stale `position_ids` dropped, positional embeddings resized to the model's grid and
    context length."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    state = convert_state_dict(model, dict(state))
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for name in ("logit_scale", "logit_bias"):
        own = getattr(model, name, None)
        if name in state and isinstance(own, torch.Tensor) and state[name].ndim != own.ndim:
            state[name] = state[name].reshape(own.shape)
    if "logit_bias" not in state and getattr(model, "logit_bias", None) is not None and "logit_scale" in state:
        state["logit_bias"] = torch.zeros_like(state["logit_scale"])
    position_ids = "text.transformer.embeddings.position_ids"
    if position_ids in state and position_ids not in model.state_dict():
        del state[position_ids]
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    return state


def _load_state_file(model: nn.Module, path: Path) -> None:
    """Load the weights in `path` into `model`: a safetensors file, a TorchScript archive (OpenAI's .pt
    files), or a torch.save checkpoint (.pt, .bin, .pth; open_clip converts and loads it). A safetensors
    file may hold what a torch.save file may (a training checkpoint's state dict, 'module.' prefixes,
    the layouts open_clip converts): the formats differ in container only. Raises
    ValueError with a one-line reason for a file that is not one of these or does not fit the model."""
    if path.stat().st_size == 0:
        raise ValueError("the file is empty")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except SafetensorError as err:
            raise ValueError(f"not a safetensors file ({_one_line(err)})") from err
        # A container, like torch.save's: it may hold what a .pt file holds, an open_clip training
        # checkpoint's 'module.'-prefixed names included.
        state = _model_weights(state)
        try:
            converted = _as_open_clip_converts(model, state)
        except Exception:  # open_clip's converters assert, index and reshape; all mean "another architecture",
            converted = state  # which the names and shapes that differ say better than their assertions
        _load_exact(model, converted)
    elif prefix := _torchscript_prefix(path):
        state = _read_torchscript_state_dict(path, prefix)
        # TorchScript does not record which buffers are persistent, so an archive of an open_clip model also
        # holds buffers open_clip rebuilds from the config (the text attention mask) and leaves out of its state dict.
        rebuilt = {name for name, _ in model.named_buffers()} - set(model.state_dict())
        _load_exact(model, {k: v for k, v in state.items() if k not in _OPENAI_EXTRA_ENTRIES and k not in rebuilt})
    else:
        # open_clip reads big_vision .npz/.npy weights with np.load, which refuses pickles.
        if path.suffix not in (".npz", ".npy"):
            _check_state_dict_pickle(path)
        try:
            open_clip.load_checkpoint(model, str(path))
        # open_clip's converters assert, index and look up attributes; all mean "another architecture".
        except Exception as err:
            raise ValueError(f"its state dict does not fit this architecture ({_one_line(err)})") from err


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


def load_backbone(
    model_name: str,
    pretrained: str | None = RANDOM_INIT,
    device: str | torch.device = "cpu",
    cache_dir: str | None = None,
) -> Backbone:
    """Build a CLIP from an open_clip architecture name and `pretrained`: an open_clip tag (downloaded or
    cached), a local checkpoint file, 'builtin' (weights shipped with this package), 'none' (random init), or
    a Hugging Face `CLIPModel` folder (`clipfit.hf_checkpoint`: its config.json names the architecture, and
    ``model_name`` is `hf_checkpoint.HF_MODEL` or an open_clip architecture that builds the same model)."""
    pretrained = pretrained or RANDOM_INIT
    folder = hf_folder(pretrained)
    if folder is not None:
        return _load_hf_backbone(model_name, pretrained, folder, device)
    _check_no_hf_model(model_name, pretrained)
    if model_name not in architectures():
        raise _unknown_model(model_name)
    force_quick_gelu = False
    weights: Path | None = None
    if pretrained == BUILTIN:
        weights = _builtin_weights(model_name)
        if not weights.is_file():
            raise BackboneError(f"the built-in weights of {model_name} are missing: no file {weights} (a broken "
                                "install, or a built-in model whose pretraining has not finished: its README section "
                                "says how to make them)")
    elif pretrained != RANDOM_INIT:
        if _looks_like_path(pretrained) or Path(pretrained).expanduser().is_file():
            weights = Path(pretrained).expanduser()
            if weights.is_dir():
                raise BackboneError(f"--pretrained {pretrained}: no {hf_checkpoint.CONFIG_FILE} in it, so not a "
                                    f"Hugging Face CLIPModel folder; {weights} is a folder, not a checkpoint file")
            if not weights.is_file():
                raise BackboneError(f"checkpoint file not found: {weights}")
        else:
            local, tag_cfg = _resolve_tag(model_name, pretrained, cache_dir)
            weights = Path(local)
            force_quick_gelu = bool(tag_cfg.get("quick_gelu", False)) and "quickgelu" not in model_name
    tokenizer = _tokenizer(model_name)  # before the model is built: one that must be fetched fails at once
    with torch.random.fork_rng(devices=[]), _quiet_random_init_warning():
        torch.manual_seed(RANDOM_INIT_SEED)
        model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=force_quick_gelu)
    if weights is not None:
        try:
            _load_state_file(model, weights)
        except (ValueError, OSError) as err:
            raise BackboneError(f"cannot load checkpoint {weights} into {model_name}: {_one_line(err)}") from err
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
    return Backbone(model=model, tokenizer=tokenizer, preprocess=preprocess,
                    model_name=model_name, pretrained=pretrained)


def _load_hf_backbone(model_name: str, pretrained: str, folder: Path, device: str | torch.device) -> Backbone:
    arch = hf_checkpoint.architecture(folder)
    hf_checkpoint.check_model_name(model_name, arch)
    with torch.random.fork_rng(devices=[]):  # every tensor is then overwritten, but the draw stays the seed's
        torch.manual_seed(RANDOM_INIT_SEED)
        model = hf_checkpoint.load_model(folder, arch)
    return Backbone(model=model.to(device).eval(), tokenizer=hf_checkpoint.tokenizer(arch),
                    preprocess=Preprocess(**hf_checkpoint.preprocess_values(folder, arch)),
                    model_name=model_name, pretrained=pretrained)


def _hf_tokenizer_name(model_name: str) -> str | None:
    """The Hugging Face tokenizer an open_clip architecture names (SigLIP's), None for open_clip's own."""
    text_cfg = (open_clip.get_model_config(model_name) or {}).get("text_cfg", {})
    return text_cfg.get("hf_tokenizer_name") or None


def _tokenizer_downloads(model_name: str) -> bool:
    """Whether open_clip's tokenizer for the architecture is fetched: a Hugging Face one, or (a name with
    "siglip" and none named) its SigLIP SentencePiece vocabulary, read from a URL."""
    return _hf_tokenizer_name(model_name) is not None or "siglip" in model_name.lower()


def _tokenizer(model_name: str):
    """open_clip's tokenizer for the architecture. One that lives on the Hugging Face hub (SigLIP's) and is not
    cached fails at once, in one line, when the hub is unreachable (transformers would retry for a minute)."""
    repo = _hf_tokenizer_name(model_name)
    if repo is not None:
        import huggingface_hub

        cached = huggingface_hub.try_to_load_from_cache(repo, "tokenizer_config.json")
        if not isinstance(cached, str) and not _hub_reachable("huggingface.co"):
            raise BackboneError(f"the tokenizer of {model_name} ({repo} on the Hugging Face hub) is not cached and "
                                "huggingface.co is unreachable (offline?)")
    try:
        return open_clip.get_tokenizer(model_name)
    # A fetched tokenizer fails in the ways of its fetcher (hub, fsspec, transformers), all meaning "not here".
    except Exception as err:
        if not _tokenizer_downloads(model_name):
            raise
        raise BackboneError(f"cannot load the tokenizer of {model_name}: {_one_line(err)}") from err


class _CountingTokenizer:
    """Stands in for a tokenizer that would need a download (SigLIP's) in weightless skeletons: parameter
    counts do not depend on token ids. Without `encode`, the prompt-length check is skipped."""

    def __init__(self, context_length: int):
        self.context_length = context_length

    def __call__(self, texts) -> torch.Tensor:
        return torch.zeros(len(texts), self.context_length, dtype=torch.long)


@functools.lru_cache(maxsize=32)
def _cached_file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """`file_sha256`, computed once per version of the file: its size and mtime are part of the key."""
    return file_sha256(path)


def weights_fingerprint(model_name: str, pretrained: str | None) -> str:
    """What identifies the base weights a run starts from: the SHA-256 of the file for built-in and local
    weights (the same name can hold other weights after an upgrade or a copy), the tag for open_clip's
    released weights, the seed for random init; for a Hugging Face folder, the SHA-256 of its config.json's
    and its weight files' digests (the config sets the architecture and activation)."""
    pretrained = pretrained or RANDOM_INIT
    if pretrained == RANDOM_INIT:
        return f"random-init:{RANDOM_INIT_SEED}"
    folder = hf_folder(pretrained)
    if folder is not None:
        lines = []
        for path in hf_checkpoint.fingerprinted_files(folder):
            stat = path.stat()
            lines.append(f"{path.name} {_cached_file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)}\n")
        return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()
    if pretrained == BUILTIN:
        path = _builtin_weights(model_name)
    elif _looks_like_path(pretrained) or Path(pretrained).expanduser().is_file():
        path = Path(pretrained).expanduser()
    else:
        return f"open_clip:{model_name}:{pretrained}"
    if path.is_dir():
        raise BackboneError(f"--pretrained {pretrained}: {path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise BackboneError(f"cannot fingerprint the weights of {model_name} {pretrained!r}: no such file {path}")
    stat = path.stat()
    return "sha256:" + _cached_file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def build_skeleton(model_name: str) -> nn.Module:
    """The architecture without allocating weights (meta device): enough to count parameters. ``model_name``:
    an open_clip architecture, or a Hugging Face `CLIPModel` folder (the architecture its config.json names)."""
    folder = hf_checkpoint.hf_folder(model_name)
    if folder is not None:
        return hf_checkpoint.build_model(hf_checkpoint.architecture(folder), device="meta")
    if model_name not in architectures():
        raise _unknown_model(model_name)
    with _quiet_random_init_warning():
        return open_clip.create_model(model_name, pretrained=None, device="meta")


def skeleton_backbone(model_name: str, pretrained: str | None = None) -> Backbone:
    """A `Backbone` around a weightless skeleton (`build_skeleton`), enough to build a method on and count or
    check what it trains, without weights or downloads: the architecture of ``model_name``, or of a Hugging
    Face folder given as ``pretrained`` (or as ``model_name``; any other ``pretrained`` is not read). One per
    architecture, shared: a method only flags its tensors. A tokenizer that would need a download is stood
    in for (counts do not depend on token ids)."""
    folder = hf_folder(pretrained)
    return _skeleton_backbone(model_name, None if folder is None else str(folder))


@functools.lru_cache(maxsize=8)
def _skeleton_backbone(model_name: str, pretrained: str | None) -> Backbone:
    folder = hf_folder(pretrained)
    if folder is None:
        model = build_skeleton(model_name)
        folder = hf_checkpoint.hf_folder(model_name)
    else:
        check_backbone_names(model_name, pretrained)
        model = hf_checkpoint.build_model(hf_checkpoint.architecture(folder), device="meta")
    if folder is not None:
        tokenizer = hf_checkpoint.tokenizer(hf_checkpoint.architecture(folder))
    elif _tokenizer_downloads(model_name):
        tokenizer = _CountingTokenizer(int(open_clip.get_model_config(model_name)["text_cfg"]["context_length"]))
    else:
        tokenizer = open_clip.get_tokenizer(model_name)
    return Backbone(model=model, tokenizer=tokenizer, preprocess=Preprocess(224, (0, 0, 0), (1, 1, 1)),
                    model_name=model_name, pretrained=pretrained or RANDOM_INIT)


def backbone_notes(model: nn.Module) -> list[str]:
    """What holds for every method on this CLIP, for `clipfit params`: how a SigLIP logit bias is treated and
    what a timm image tower means for the methods that select by structure."""
    notes = []
    if getattr(model, "logit_bias", None) is not None:
        notes.append("a SigLIP model (pretrained with a sigmoid loss and a logit bias): every method here trains and "
                     "classifies with softmax cross-entropy over logit_scale * cosine; the logit bias adds the same "
                     "to every class's logit, so it changes neither that loss nor any prediction, and stays frozen")
    if type(model.visual).__name__ == "TimmModel":
        notes.append(f"a timm image tower ({type(getattr(model.visual, 'trunk', model.visual)).__name__}): "
                     "'image LayerNorms' are all of its nn.LayerNorm modules, 'image block biases' every bias "
                     "in it; visual prompts (VPT, MaPLe) need open_clip's own ViT")
    return notes
