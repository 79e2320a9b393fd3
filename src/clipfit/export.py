"""`clipfit export`: a tuned run as one safetensors file that plain open_clip and a few lines of PyTorch use.

The file holds the tuned CLIP's full state dict under open_clip's own keys, and, for a method that
classifies with more than the CLIP (learned prompts, an adapter, a cache, a head), the tensors that
classifier reads under keys starting with `clipfit.`; its metadata name the form, the open_clip
architecture (and its config, for one open_clip does not ship, such as the mini CLIP), the classes and the
prompts. The forms (`Method.export_state` says which a method gets):

- "open_clip": the update lives in the CLIP's own tensors (CLIPFit and its variants, BitFit, LN-only,
  zero-shot; CLIP-LoRA merged into the packed attention projections, as peft's `merge_and_unload`);
  `open_clip.create_model(arch).load_state_dict(file)` is the tuned model; classify with the class prompts.
- "class_features": the learned prompts' unit-norm class text features [classes, dim] (CoOp, KgCoOp,
  ProGrad and their +LN variants): logits = logit_scale * normalize(encode_image(x)) @ features.T.
- "linear_head": the linear probe: logits = encode_image(x) @ W.T + b.
- "adapter": CLIP-Adapter: f = encode_image(x); f' = ratio * adapter(f) + (1 - ratio) * f; then the class
  features (as above) or the head.
- "cache": Tip-Adapter(-F): f = normalize(encode_image(x)); logits = logit_scale * f @ features.T +
  alpha * exp(-beta * (1 - f @ keys.T)) @ values.

`ExportedModel` is those few lines; the README shows them without this package.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import ClipFitError
from .files import atomic_write

FORMAT = "clipfit-export/1"
EXTRA = "clipfit."
FORMS = ("open_clip", "class_features", "linear_head", "adapter", "cache")


def export_run(run_dir: str | Path, out: str | Path) -> dict[str, str]:
    """Write the tuned model of a finished seed folder to ``out`` (atomically); returns its metadata.
    `ClipFitError` when the run is unfinished, or when its method changes the towers' forward in a way
    plain open_clip cannot run (VPT, MaPLe, CoCoOp: use the adapter file with `clipfit predict --run`)."""
    from safetensors.torch import save_file

    from .runner import load_run

    if Path(out).is_dir():
        raise ClipFitError(f"--out {out}: is a folder; give the file to write, e.g. {Path(out) / 'model.safetensors'}")
    config, method = load_run(run_dir, device="cpu")
    form, state, extra, info = method.export_state()
    if form not in FORMS:
        raise ValueError(f"method {method.name!r}: unknown export form {form!r}")  # a bug of ours
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    tensors.update({EXTRA + k: v.detach().cpu().float().contiguous() for k, v in extra.items()})
    metadata = {
        "format": FORMAT, "form": form, "architecture": config.model, "pretrained": config.pretrained,
        "model_config": json.dumps(_model_config(config.model, config.pretrained)), "method": config.method,
        "method_options": json.dumps(config.method_options), "classnames": json.dumps(method.classnames),
        "prompts": json.dumps(method.prompts), "template": method.template, "source_run": str(Path(run_dir).resolve()),
        **{k: json.dumps(v) for k, v in info.items()},
    }
    atomic_write(Path(out), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return metadata


def _model_config(model: str, pretrained: str | None = None) -> dict:
    """The open_clip model config of ``model`` (written into the file, so that an architecture open_clip
    does not ship, such as the built-in mini CLIP, can be created: `open_clip.add_model_config`); for a
    Hugging Face folder as ``pretrained``, the one its config.json describes; `ClipFitError` when its
    preprocessor_config.json asks for other than the mean, std and interpolation open_clip gives that model."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from open_clip.factory import get_model_config

    from .backbone import hf_folder
    from .hf_checkpoint import PREPROCESSOR_FILE, architecture, preprocess_values

    folder = hf_folder(pretrained)
    if folder is not None:
        arch = architecture(folder)
        values = preprocess_values(folder, arch)
        expected = (tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD), "bicubic")
        if (values["mean"], values["std"], values["interpolation"]) != expected:
            raise ClipFitError(f"{folder / PREPROCESSOR_FILE}: its image mean, std or resampling is not the one "
                               "open_clip gives the exported model; classify with the run folder "
                               "(clipfit predict --run)")
        return arch.model_config()
    config = get_model_config(model)
    if config is None:
        raise ClipFitError(f"model {model!r} has no open_clip config to record")
    return config


class ExportedModel:
    """An exported file as a classifier, built with open_clip and torch only (the README's few lines).

    ``ExportedModel(path)`` -> ``.logits(images)`` fp32 [batch, classes] of preprocessed images; ``.classnames``;
    ``.model`` the plain open_clip model and ``.preprocess`` its evaluation transform (PIL image -> tensor).
    `ClipFitError` naming the file when it is not an export."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        import open_clip
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise ClipFitError(f"{path}: no such file (give a file written by clipfit export)")
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            state = load_file(str(path), device=device)
        except Exception as err:  # safetensors raises its own SafetensorError for a damaged header
            raise ClipFitError(f"{path}: not a readable safetensors file ({err})") from None
        if meta.get("format") != FORMAT:
            raise ClipFitError(f"{path}: not a clipfit export (format {meta.get('format')!r}, expected {FORMAT!r})")
        self.meta = meta
        self.form = meta["form"]
        self.classnames = json.loads(meta["classnames"])
        self.extra = {k[len(EXTRA):]: state.pop(k) for k in list(state) if k.startswith(EXTRA)}
        arch = meta["architecture"]
        self.model, self.preprocess = _create(arch, json.loads(meta["model_config"]))
        self.model = self.model.to(device).eval()
        self.model.load_state_dict(state)
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.ratio = json.loads(meta.get("ratio", "null"))
        self.device = device

    @torch.no_grad()
    def class_features(self) -> torch.Tensor:
        if "class_features" in self.extra:
            return self.extra["class_features"]
        tokens = self.tokenizer(json.loads(self.meta["prompts"])).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        f = self.model.encode_image(images.to(self.device)).float()
        scale = self.model.logit_scale.exp().float()
        if self.form == "linear_head":
            return f @ self.extra["head.weight"].t() + self.extra["head.bias"]
        if self.form == "adapter":
            x = F.relu(F.relu(f @ self.extra["adapter.0.weight"].t()) @ self.extra["adapter.2.weight"].t())
            f = self.ratio * x + (1 - self.ratio) * f
            if "head.weight" in self.extra:
                return f @ self.extra["head.weight"].t() + self.extra["head.bias"]
        f = F.normalize(f, dim=-1)
        logits = scale * f @ self.class_features().t()
        if self.form == "cache":
            affinity = f @ self.extra["cache_keys"].t()
            beta, alpha = self.extra["beta"], self.extra["alpha"]
            logits = logits + alpha * torch.exp(-beta * (1 - affinity)) @ self.extra["cache_values"]
        return logits


def _create(arch: str, config: dict):
    """open_clip's model of ``arch`` and its evaluation transform; from the recorded config when open_clip
    does not know the name (as a user does with `open_clip.add_model_config`)."""
    import tempfile

    import open_clip

    # A name whose recorded config is not open_clip's registered one (`hf-clip`: each Hugging Face folder's own).
    if open_clip.get_model_config(arch) != config:
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / f"{arch}.json").write_text(json.dumps(config))
            open_clip.add_model_config(folder)
    # open_clip warns that no pretrained weights were loaded: the file's state dict is loaded next.
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch)
    finally:
        logger.setLevel(level)
    return model, preprocess
