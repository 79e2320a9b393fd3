"""Hugging Face `transformers` CLIP checkpoints (a `CLIPModel` folder) loaded as the equivalent open_clip CLIP.

A folder as `CLIPModel.save_pretrained` writes it and users download it (`openai/clip-vit-base-patch32`,
`laion/CLIP-ViT-B-32-laion2B-s34B-b79K`, ...): `config.json`, and the weights in `model.safetensors` or
`pytorch_model.bin` (or shards named by `model.safetensors.index.json` / `pytorch_model.bin.index.json`);
`preprocessor_config.json` when present gives the image mean and std. The architecture is read from
`config.json` (`architecture`), an open_clip `CLIP` is built from the equivalent open_clip model config, and
the weights are renamed into it (`convert_state_dict`), so every method runs on it unchanged.

What makes the two models compute the same features (checked against `transformers.CLIPModel` in
`tests/test_hf_checkpoint.py`):

- Both towers are pre-norm transformers with the same blocks: HF's separate q/k/v projections are
  open_clip's packed `attn.in_proj_weight` / `in_proj_bias` (rows q, k, v in that order); `layer_norm1/2`
  are `ln_1/2`, `mlp.fc1/fc2` are `mlp.c_fc/c_proj`; `pre_layrnorm` (HF's spelling) is `ln_pre`,
  `post_layernorm` is `ln_post`, `final_layer_norm` is `ln_final`; HF's projections are bias-free Linears,
  whose weights [embed, width] are open_clip's `visual.proj` / `text_projection` [width, embed] transposed.
- The image feature is the class token's after `ln_post` in both (open_clip normalises every token and
  takes the first; HF takes the first and normalises it).
- The text feature is pooled at the end-of-text token. HF pools at `argmax(input_ids)` when the config's
  `eos_token_id` is 2 (configs from before transformers PR #24773) and at the first `eos_token_id`
  otherwise; open_clip pools at `argmax(tokens)`. open_clip's CLIP tokenizer (`SimpleTokenizer`, the
  same BPE vocabulary of 49,408 tokens, 77 positions) ends every prompt with 49407, its highest id, and
  pads with 0, so all three positions coincide. Other vocabularies or context lengths are refused: their
  tokenizer is not open_clip's.
- HF's `position_ids` buffer (saved by older versions) is `arange`, as open_clip adds its positional
  embeddings; a stored one that is not is refused.
- `hidden_act` "quick_gelu" is open_clip's `quick_gelu=True`, "gelu" (exact, erf) its default `nn.GELU`;
  `layer_norm_eps` other than open_clip's 1e-5 goes into the towers' `norm_kwargs`.

The loader needs no `transformers`: config.json is read with `json`, weights with safetensors or
`torch.load(weights_only=True)`. Every problem is one `BackboneError` line naming the file and the field or
tensor at fault.
"""

from __future__ import annotations

import dataclasses
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import BackboneError

# The model name that stands for "the architecture the --pretrained folder's config.json describes".
HF_MODEL = "hf-clip"
CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
# In the order transformers prefers them.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json")

# open_clip's CLIP tokenizer: its BPE vocabulary and context, and the token that ends every prompt.
CLIP_VOCAB_SIZE = 49408
CLIP_CONTEXT_LENGTH = 77
CLIP_EOT_TOKEN = 49407
# HF configs from before transformers PR #24773 say 2 and pool at argmax(input_ids).
LEGACY_EOS_TOKEN = 2
OPEN_CLIP_LN_EPS = 1e-5
ACTIVATIONS = {"quick_gelu": True, "gelu": False}  # hidden_act -> open_clip's quick_gelu

# transformers' `CLIPTextConfig` / `CLIPVisionConfig` / `CLIPConfig` defaults: `save_pretrained` writes only
# the values that differ from them.
TEXT_DEFAULTS = {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                 "num_attention_heads": 8, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                 "layer_norm_eps": 1e-5, "eos_token_id": CLIP_EOT_TOKEN}
VISION_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                   "num_channels": 3, "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu",
                   "layer_norm_eps": 1e-5}
CLIP_DEFAULTS = {"projection_dim": 512}

# PIL's resampling filters as `preprocessor_config.json` names them, and torchvision's names.
RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def hf_folder(pretrained: str | None) -> Path | None:
    """The folder ``pretrained`` names when it is a Hugging Face model folder (a directory holding
    config.json), else None."""
    if not pretrained:
        return None
    path = Path(pretrained).expanduser()
    return path if (path / CONFIG_FILE).is_file() else None


@dataclass(frozen=True)
class HFArchitecture:
    """What a CLIPModel config.json describes, as an open_clip model config (`model_config()`).

    ``vision`` and ``text`` are `open_clip.model.CLIPVisionCfg` / `CLIPTextCfg` fields; ``eos_token_id`` is
    the config's (2: HF pools at argmax; 49407: at the first end-of-text; the same position for open_clip's
    tokenizer); ``source`` the config file, for messages."""

    source: Path
    embed_dim: int
    quick_gelu: bool
    vision: dict
    text: dict
    eos_token_id: int

    def model_config(self) -> dict:
        """The open_clip model config (the dict a `model_configs/*.json` file holds)."""
        return {"embed_dim": self.embed_dim, "quick_gelu": self.quick_gelu,
                "vision_cfg": dict(self.vision), "text_cfg": dict(self.text)}

    @property
    def vision_layers(self) -> int:
        return int(self.vision["layers"])

    @property
    def text_layers(self) -> int:
        return int(self.text["layers"])


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise BackboneError(f"{path}: cannot be read ({err})") from err
    except json.JSONDecodeError as err:
        raise BackboneError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise BackboneError(f"{path}: holds a JSON {type(data).__name__}, not an object")
    return data


def _integer(config: dict, key: str, source: str) -> int:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BackboneError(f"{source}: {key} must be a whole number >= 1, got {value!r}")
    return value


def _tower(config: dict, name: str, defaults: dict, source: Path) -> dict:
    """A tower's config (``text_config`` or ``vision_config``) with transformers' defaults filled in (and the
    old `*_config_dict` overrides applied, as `CLIPConfig` does)."""
    given = config.get(name)
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise BackboneError(f"{source}: {name} must be an object, got {type(given).__name__}")
    overrides = config.get(f"{name}_dict") or {}
    return {**defaults, **given, **(overrides if isinstance(overrides, dict) else {})}


def _width_and_ratio(tower: dict, where: str) -> tuple[int, float]:
    width = _integer(tower, "hidden_size", where)
    intermediate = _integer(tower, "intermediate_size", where)
    ratio = intermediate / width
    if int(width * ratio) != intermediate:  # open_clip sizes the MLP as int(width * mlp_ratio)
        raise BackboneError(f"{where}: intermediate_size {intermediate} is not a width ({width}) open_clip can build")
    return width, ratio


def _norm_kwargs(tower: dict, where: str) -> dict:
    eps = tower["layer_norm_eps"]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise BackboneError(f"{where}: layer_norm_eps must be a number > 0, got {eps!r}")
    return {} if eps == OPEN_CLIP_LN_EPS else {"norm_kwargs": {"eps": float(eps)}}


def architecture(folder: str | Path) -> HFArchitecture:
    """The architecture `folder/config.json` describes; `BackboneError` naming the file and field when the
    folder has no config.json, the config is not a `CLIPModel`'s (SigLIP, a vision- or text-only model), or a
    value has no open_clip equivalent (its tokenizer not open_clip's CLIP tokenizer included)."""
    folder = Path(folder)
    source = folder / CONFIG_FILE
    if not source.is_file():
        raise BackboneError(f"{folder}: no {CONFIG_FILE}, so not a Hugging Face transformers model folder "
                            f"(expected {CONFIG_FILE} and model.safetensors or pytorch_model.bin, as "
                            "CLIPModel.save_pretrained writes them)")
    config = _read_json(source)
    model_type = config.get("model_type")
    classes = config.get("architectures") or []
    if model_type != "clip" or (classes and "CLIPModel" not in classes):
        what = f"model_type {model_type!r}" + (f" (architectures {', '.join(map(str, classes))})" if classes else "")
        raise BackboneError(f"{source}: {what} is not a transformers CLIPModel (model_type 'clip' with both "
                            "towers); SigLIP, vision-only and text-only checkpoints are not loaded from folders")
    text = _tower(config, "text_config", TEXT_DEFAULTS, source)
    vision = _tower(config, "vision_config", VISION_DEFAULTS, source)
    text_where, vision_where = f"{source}: text_config", f"{source}: vision_config"
    acts = {where: tower["hidden_act"] for where, tower in ((text_where, text), (vision_where, vision))}
    for where, act in acts.items():
        if act not in ACTIVATIONS:
            raise BackboneError(f"{where}.hidden_act {act!r} has no open_clip equivalent "
                                f"(supported: {', '.join(ACTIVATIONS)})")
    if len(set(acts.values())) > 1:
        raise BackboneError(f"{source}: the towers' hidden_act differ ({text['hidden_act']!r} text, "
                            f"{vision['hidden_act']!r} image); open_clip uses one activation for both")
    vocab = _integer(text, "vocab_size", text_where)
    context = _integer(text, "max_position_embeddings", text_where)
    if (vocab, context) != (CLIP_VOCAB_SIZE, CLIP_CONTEXT_LENGTH):
        raise BackboneError(f"{text_where}: vocab_size {vocab} and max_position_embeddings {context} are not "
                            f"CLIP's BPE tokenizer's ({CLIP_VOCAB_SIZE}, {CLIP_CONTEXT_LENGTH}), the only one "
                            "loaded for Hugging Face folders")
    eos = text["eos_token_id"]
    if eos not in (LEGACY_EOS_TOKEN, CLIP_EOT_TOKEN):
        raise BackboneError(f"{text_where}: eos_token_id {eos!r} is not CLIP's end-of-text token ({CLIP_EOT_TOKEN}, "
                            f"or the legacy {LEGACY_EOS_TOKEN}): the text feature would be pooled elsewhere")
    if _integer(vision, "num_channels", vision_where) != 3:
        raise BackboneError(f"{vision_where}: num_channels {vision['num_channels']!r}; open_clip's image tower "
                            "takes 3 (RGB)")
    text_width, text_ratio = _width_and_ratio(text, text_where)
    vision_width, vision_ratio = _width_and_ratio(vision, vision_where)
    heads = {where: _integer(tower, "num_attention_heads", where)
             for where, tower in ((text_where, text), (vision_where, vision))}
    for where, width in ((text_where, text_width), (vision_where, vision_width)):
        if width % heads[where]:
            raise BackboneError(f"{where}: hidden_size {width} is not a multiple of num_attention_heads "
                                f"{heads[where]}")
    image_size, patch_size = _integer(vision, "image_size", vision_where), _integer(vision, "patch_size", vision_where)
    if image_size % patch_size:
        raise BackboneError(f"{vision_where}: image_size {image_size} is not a multiple of patch_size {patch_size}")
    embed_dim = _integer({**CLIP_DEFAULTS, **config}, "projection_dim", str(source))
    return HFArchitecture(
        source=source,
        embed_dim=embed_dim,
        quick_gelu=ACTIVATIONS[text["hidden_act"]],
        vision={"layers": _integer(vision, "num_hidden_layers", vision_where), "width": vision_width,
                "head_width": vision_width // heads[vision_where], "mlp_ratio": vision_ratio,
                "patch_size": patch_size, "image_size": image_size, **_norm_kwargs(vision, vision_where)},
        text={"context_length": context, "vocab_size": vocab, "width": text_width, "heads": heads[text_where],
              "layers": _integer(text, "num_hidden_layers", text_where), "mlp_ratio": text_ratio,
              **_norm_kwargs(text, text_where)},
        eos_token_id=eos,
    )


def _comparable(model_config: dict) -> dict:
    """An open_clip model config with every field its dataclasses default filled in, flattened, so that two
    configs that build the same model compare equal."""
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    try:
        vision = dataclasses.asdict(CLIPVisionCfg(**model_config.get("vision_cfg", {})))
        text = dataclasses.asdict(CLIPTextCfg(**model_config.get("text_cfg", {})))
    except TypeError:  # fields these dataclasses do not have (a plugin's config): another kind of model
        return {"unknown fields": True}
    flat = {key: model_config.get(key) for key in ("embed_dim", "init_logit_bias", "custom_text", "multimodal_cfg")}
    flat["quick_gelu"] = bool(model_config.get("quick_gelu", False))
    flat["custom_text"] = bool(flat["custom_text"])
    flat.update({f"vision_cfg.{k}": v for k, v in vision.items()})
    flat.update({f"text_cfg.{k}": v for k, v in text.items()})
    return flat


def differences(arch: HFArchitecture, model_name: str) -> list[str]:
    """Where open_clip's architecture ``model_name`` differs from ``arch`` ("field: config.json X, name Y")."""
    import open_clip

    own, other = _comparable(arch.model_config()), _comparable(open_clip.get_model_config(model_name) or {})
    return [f"{key}: config.json {own.get(key)!r}, {model_name} {other.get(key)!r}"
            for key in sorted(set(own) | set(other)) if own.get(key) != other.get(key)]


def equivalent_architectures(arch: HFArchitecture) -> list[str]:
    """open_clip's architectures that build the same model as ``arch`` (ViT-B-32-quickgelu for OpenAI's B/32)."""
    import open_clip

    return [name for name in open_clip.list_models() if name != HF_MODEL and not differences(arch, name)]


def check_model_name(model_name: str, arch: HFArchitecture) -> None:
    """`BackboneError` unless ``model_name`` is `HF_MODEL` or an open_clip architecture that builds the model
    ``arch`` describes (so a run that names one is the same model as the folder's)."""
    if model_name == HF_MODEL:
        return
    import open_clip

    if model_name not in open_clip.list_models():
        raise BackboneError(f"--model {model_name!r} is not an open_clip architecture; with a Hugging Face folder as "
                            f"--pretrained, leave --model out (or give {HF_MODEL!r}): {arch.source} names the "
                            "architecture")
    found = differences(arch, model_name)
    if found:
        same = equivalent_architectures(arch)
        instead = f" or give {same[0]}" if same else ""
        raise BackboneError(f"--model {model_name} disagrees with {arch.source} ({'; '.join(found[:2])}); leave "
                            f"--model out (the architecture is read from {CONFIG_FILE}){instead}")


def build_model(arch: HFArchitecture, device: str | torch.device | None = None) -> nn.Module:
    """A randomly initialised open_clip `CLIP` of ``arch`` (on ``device``: "meta" for a weightless skeleton)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    with torch.device(device or "cpu"):
        return CLIP(arch.embed_dim, CLIPVisionCfg(**arch.vision), CLIPTextCfg(**arch.text), quick_gelu=arch.quick_gelu)


def tokenizer(arch: HFArchitecture):
    """open_clip's CLIP tokenizer (`architecture` has checked that the folder's model uses CLIP's BPE)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=arch.text["context_length"])


def preprocess_values(folder: str | Path, arch: HFArchitecture) -> dict:
    """image_size, mean, std and interpolation: preprocessor_config.json's `image_mean`, `image_std` and
    `resample` when the folder has one, else CLIP's (OpenAI's mean and std, bicubic); the size is the
    model's (`vision_config.image_size`)."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    values = {"image_size": arch.vision["image_size"], "mean": tuple(OPENAI_DATASET_MEAN),
              "std": tuple(OPENAI_DATASET_STD), "interpolation": "bicubic"}
    path = Path(folder) / PREPROCESSOR_FILE
    if not path.is_file():
        return values
    config = _read_json(path)
    for key, field in (("image_mean", "mean"), ("image_std", "std")):
        if key in config:
            value = config[key]
            if not (isinstance(value, list) and len(value) == 3
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
                raise BackboneError(f"{path}: {key} must be a list of 3 numbers, got {value!r}")
            if field == "std" and not all(v > 0 for v in value):
                raise BackboneError(f"{path}: {key} must be positive, got {value!r}")
            values[field] = tuple(float(v) for v in value)
    if "resample" in config:
        if config["resample"] not in RESAMPLE:
            raise BackboneError(f"{path}: resample {config['resample']!r} is not one of "
                                f"{', '.join(f'{k} ({v})' for k, v in RESAMPLE.items())}")
        values["interpolation"] = RESAMPLE[config["resample"]]
    return values


def weight_files(folder: str | Path) -> list[Path]:
    """The files that hold the folder's weights, in transformers' order of preference: model.safetensors, its
    shards (model.safetensors.index.json), pytorch_model.bin, its shards; `BackboneError` when there is none."""
    folder = Path(folder)
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return [path]
        weight_map = _read_json(path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise BackboneError(f"{path}: no weight_map naming the shard of each tensor")
        shards = []
        for shard in dict.fromkeys(weight_map.values()):
            if not isinstance(shard, str) or Path(shard).name != shard:
                raise BackboneError(f"{path}: weight_map names {shard!r}, not a file beside it")
            if not (folder / shard).is_file():
                raise BackboneError(f"{path}: its shard {shard} is missing from {folder}")
            shards.append(folder / shard)
        return shards
    raise BackboneError(f"{folder}: no weights ({' or '.join(WEIGHT_FILES[::2])}) beside {CONFIG_FILE}")


def fingerprinted_files(folder: str | Path) -> list[Path]:
    """The files whose bytes make the model: config.json (the architecture, the activation) and the weights."""
    return [Path(folder) / CONFIG_FILE, *weight_files(folder)]


def _read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    if path.stat().st_size == 0:
        raise BackboneError(f"{path}: the file is empty")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as err:
            raise BackboneError(f"{path}: not a safetensors file ({' '.join(str(err).split())[:200]})") from err
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    # torch.load fails in many ways (pickle, zip, EOF, a global weights_only refuses) on what is not a state dict.
    except Exception as err:
        reason = " ".join(str(err).split())
        refused = re.search(r"WeightsUnpickler error: (.*?)(?: Please use|$)", reason)
        why = f"its pickle holds more than tensors ({refused.group(1)})" if refused else reason[:200]
        raise BackboneError(f"{path}: not a readable PyTorch state dict ({why})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"{path}: holds a {type(state).__name__}, not a state dict (a dict of tensors)")
    return state


def read_weights(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """The HF state dict of the folder, and the file each tensor came from (for messages)."""
    state, origin = {}, {}
    for path in weight_files(folder):
        tensors = _read_weight_file(path)
        state.update(tensors)
        origin.update(dict.fromkeys(tensors, path))
    return state, origin


# HF tensor names (per block and per tower) -> open_clip's; q/k/v share their packed target.
_BLOCK = {**{f"self_attn.{m}_proj.{p}": f"attn.in_proj_{p}" for m in "qkv" for p in ("weight", "bias")},
          **{f"{hf}.{p}": f"{oc}.{p}" for hf, oc in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                                                     ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                                                     ("mlp.fc2", "mlp.c_proj")) for p in ("weight", "bias")}}
_FIXED = {
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    **{f"vision_model.pre_layrnorm.{p}": f"visual.ln_pre.{p}" for p in ("weight", "bias")},
    **{f"vision_model.post_layernorm.{p}": f"visual.ln_post.{p}" for p in ("weight", "bias")},
    "visual_projection.weight": "visual.proj",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    **{f"text_model.final_layer_norm.{p}": f"ln_final.{p}" for p in ("weight", "bias")},
    "text_projection.weight": "text_projection",
    "logit_scale": "logit_scale",
}
# Stored by transformers before it made them non-persistent; open_clip has no such buffer (see the module doc).
_POSITION_IDS = ("vision_model.embeddings.position_ids", "text_model.embeddings.position_ids")
_TRANSPOSED = ("visual_projection.weight", "text_projection.weight")


def key_map(arch: HFArchitecture) -> dict[str, str]:
    """Every tensor name of the HF `CLIPModel` of ``arch`` -> its open_clip state-dict name."""
    names = dict(_FIXED)
    for hf, oc, layers in (("vision_model", "visual.transformer.resblocks", arch.vision_layers),
                           ("text_model", "transformer.resblocks", arch.text_layers)):
        for i in range(layers):
            names.update({f"{hf}.encoder.layers.{i}.{k}": f"{oc}.{i}.{v}" for k, v in _BLOCK.items()})
    return names


def convert_state_dict(state: dict[str, torch.Tensor], arch: HFArchitecture,
                       origin: dict[str, Path] | None = None) -> dict[str, torch.Tensor]:
    """An HF `CLIPModel` state dict renamed (and packed, transposed) into open_clip's names. `BackboneError`
    naming the file and the first tensors for missing or unexpected names and a stored `position_ids`
    that is not `arange`."""
    origin = origin or {}

    def where(key: str) -> str:
        return str(origin.get(key, arch.source.parent))

    names = key_map(arch)
    for key in _POSITION_IDS:
        if key in state:
            ids = state[key]
            if not torch.equal(ids.reshape(-1).long(), torch.arange(ids.numel())):
                raise BackboneError(f"{where(key)}: {key} is not 0, 1, 2, ...: positions are not in order, "
                                    "which open_clip's positional embedding assumes")
    unexpected = sorted(set(state) - set(names) - set(_POSITION_IDS))
    missing = sorted(set(names) - set(state))
    if unexpected or missing:
        first = unexpected[0] if unexpected else missing[0]
        more = len(unexpected) + len(missing) - 1
        what = "unexpected tensor" if unexpected else "missing tensor"
        counts = f" ({len(unexpected)} unexpected, {len(missing)} missing in all)" if more else ""
        source = where(first) if unexpected else ", ".join(sorted({where(k) for k in state}) or [where(first)])
        raise BackboneError(f"{source}: {what} {first}{counts}: not the CLIPModel that {arch.source} describes")
    converted: dict[str, torch.Tensor] = {}
    packed: dict[str, list[torch.Tensor]] = {}
    for hf_key, oc_key in names.items():
        tensor = state[hf_key]
        if hf_key in _TRANSPOSED:
            tensor = tensor.t()
        if ".in_proj_" in oc_key:
            packed.setdefault(oc_key, []).append(tensor)  # q, k, v: `_BLOCK`'s order
        else:
            converted[oc_key] = tensor
    for oc_key, parts in packed.items():
        shapes = {tuple(p.shape) for p in parts}
        if len(shapes) > 1:
            raise BackboneError(f"{arch.source.parent}: the q/k/v projections packed into {oc_key} differ in shape "
                                f"({', '.join(map(str, sorted(shapes)))})")
        converted[oc_key] = torch.cat(parts, dim=0)
    return converted


def load_state(model: nn.Module, state: dict[str, torch.Tensor], arch: HFArchitecture,
               origin: dict[str, Path] | None = None) -> None:
    """Copy a converted state into ``model`` (cast to its dtypes); `BackboneError` naming the HF tensor whose
    shape is not the model's."""
    expected = model.state_dict()
    back = {oc: hf for hf, oc in key_map(arch).items()}
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            hf_key = back[key]
            source = (origin or {}).get(hf_key, arch.source.parent)
            raise BackboneError(f"{source}: tensor {hf_key} has shape {tuple(tensor.shape)} (as {key}); the CLIPModel "
                                f"{arch.source} describes has {tuple(expected[key].shape)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def load_model(folder: str | Path, arch: HFArchitecture | None = None) -> nn.Module:
    """The open_clip CLIP with the folder's weights (built on the CPU, in eval mode)."""
    arch = arch or architecture(folder)
    state, origin = read_weights(folder)
    converted = convert_state_dict(state, arch, origin)
    model = build_model(arch)
    load_state(model, converted, arch, origin)
    return model.eval()
