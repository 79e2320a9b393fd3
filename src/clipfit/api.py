"""The Python API: everything the command line does, in a few calls.

from clipfit import api
summary = api.run(api.RunConfig(model="ViT-B-32", pretrained="/ckpt/vit-b-32.pt", dataset="imagefolder",
                                data_root="./my_photos", protocol="few-shot", shots=8, seeds=[1], out="runs/mine"))
api.predict("runs/mine/seed1", ["cat.jpg"])
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import open_clip
import torch

from . import data
from .backbone import backbone_notes, skeleton_backbone
from .config import OptimConfig, RunConfig
from .defaults import default_data_root
from .errors import ClipFitError
from .methods import build_method, get_method
from .protocols import get_protocol
from .runner import evaluate_sets, evaluate_targets, image_datasets, load_adapter, load_run, load_targets, run
from .templates import check_templates, resolve_templates

__all__ = [
    "RunConfig",
    "OptimConfig",
    "run",
    "load_run",
    "load_adapter",
    "count_parameters",
    "evaluate_run",
    "predict",
    "check_dataset",
    "list_datasets",
    "list_methods",
    "list_models",
    "replace_config",
]


def replace_config(config: RunConfig, *, optim: dict | None = None, **fields) -> RunConfig:
    """A copy of `config` with some top-level fields and optimiser fields changed."""
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(RunConfig)})
    if unknown:
        raise ClipFitError(f"unknown config field(s): {', '.join(unknown)}")
    new_optim = dataclasses.replace(config.optim, **(optim or {}))
    return dataclasses.replace(config, optim=new_optim, **fields)


def count_parameters(method: str, model: str, protocol: str = "base2new") -> dict[str, int]:
    """Trainable parameters per group for `method` on architecture `model` (an open_clip architecture, or a
    Hugging Face CLIPModel folder) with the method's defaults for `protocol` (CoOp: 4 context vectors for
    base-to-new, 16 for few-shot), without loading weights: {"groups": {group: count}, "notes": [...]}
    (the method's notes, then the backbone's, `model_notes`). `ClipFitError` with the one-line reason when
    the method cannot apply to the architecture (a ResNet image tower for visual prompts)."""
    cls = get_method(method)
    backbone = skeleton_backbone(model)
    options = cls.protocol_defaults(protocol, "imagefolder")
    instance = build_method(method, backbone, ["class"], "{}", options)
    notes = list(instance.notes) + backbone_notes(backbone.model)
    if not cls.classifies_unseen(options):
        notes.append(
            "its classifier holds the training classes (a head or cache sized by them): counted here for one "
            "class; no base-to-new"
        )
    return {"groups": instance.parameter_groups(), "notes": notes}


def model_notes(model: str) -> list[str]:
    """What holds for every method on architecture `model` (a SigLIP logit bias, a timm image tower)."""
    return backbone_notes(skeleton_backbone(model).model)


def evaluate_run(
    run_dir: str | Path,
    *,
    dataset: str | None = None,
    data_root: str | None = None,
    split: str | None = None,
    template: str | None = None,
    templates: str | list[str] | None = None,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, float]:
    """Accuracy (%) of a tuned run: on its own test sets by default (a transfer protocol's targets
    included), or on another dataset (all its classes). Returns the metrics, with ``test_sets`` naming
    what each one was (`runner.evaluate_named`).

    ``templates``: a prompt ensemble instead of the run's (`clipfit.templates`: a named set, a file or a
    list; `ClipFitError` from a method that refuses one); None: the run's own, where ``clip`` names the
    CLIP set of whichever dataset is evaluated and a file's templates or another named set stay as
    recorded."""
    config, method = load_run(run_dir, device)
    if templates is not None:
        check_templates(templates)
        get_method(config.method).check_templates_role(config.method_options)  # one that refuses says why
        config = dataclasses.replace(config, templates=resolve_templates(templates))
    name = dataset or config.dataset
    if dataset in data.GENERIC_FORMATS and data_root is None:
        raise ClipFitError(
            f"--data-root is required with --dataset {dataset} "
            f"(the {'CSV file' if dataset == 'csv' else 'image folder'})"
        )
    root = data_root or (config.data_root if dataset is None else str(default_data_root()))
    splits = data.load_dataset(name, root, template=template or (config.template if dataset is None else None))
    method.template = splits.template
    _, test_dataset = image_datasets(method.backbone, config)
    if split is None and dataset is None:
        protocol = get_protocol(config.protocol)
    else:
        which = split or "all"
        # All classes are reported as "accuracy", as the few-shot protocol names it.
        protocol = dataclasses.replace(
            get_protocol("few-shot"),
            name=which,
            eval_sets=lambda s: {"accuracy" if which == "all" else which: data.subsample_classes(s, which)},
        )
    config = dataclasses.replace(config, num_workers=0)
    metrics = evaluate_sets(method, protocol, splits, test_dataset, config, progress)
    if split is None and dataset is None and protocol.transfers:  # the run's own targets too
        transfer = evaluate_targets(method, load_targets(config), test_dataset, config, progress)
        metrics.update({**transfer, "test_sets": {**metrics["test_sets"], **transfer["test_sets"]}})
    return metrics


def predict(run_dir: str | Path, images: list[str | Path], *, top_k: int = 5, device: str = "auto") -> list[dict]:
    """Top-k classes and probabilities for each image file, with the run's classes."""
    config, method = load_run(run_dir, device)
    p = method.backbone.preprocess
    test_tf = data.test_transform(p.image_size, p.mean, p.std)
    results = []
    with torch.no_grad():
        classifier = method.classifier()
        for path in images:
            tensor = test_tf(data.open_image(path)).unsqueeze(0).to(method.backbone.device)
            results.append(_top(path, method.logits(tensor, classifier), method.classnames, top_k))
    return results


def _top(image: str | Path, logits: torch.Tensor, classnames: list[str], k: int) -> dict:
    """The k most probable classes of one image's logits [1, classes], with their probabilities."""
    top = logits.softmax(dim=-1)[0].topk(min(k, len(classnames)))
    return {"image": str(image), "top": [(classnames[i], p) for p, i in zip(top.values.tolist(), top.indices.tolist())]}


def export(run_dir: str | Path, out: str | Path) -> dict[str, str]:
    """Write a finished seed folder's tuned model as one safetensors file for plain open_clip (see
    `clipfit.export`: the form each method gets); returns the file's metadata."""
    from .export import export_run

    return export_run(run_dir, out)


def predict_exported(path: str | Path, images: list[str | Path], *, top_k: int = 5, device: str = "auto") -> list[dict]:
    """`predict` with an exported file (`clipfit export`) instead of a run folder."""
    from .config import check_device
    from .export import ExportedModel

    model = ExportedModel(path, device=check_device(device))
    return [
        _top(image, model.logits(model.preprocess(data.open_image(image)).unsqueeze(0)), model.classnames, top_k)
        for image in images
    ]


def check_dataset(name: str, root: str | Path, decode: bool | None = None):
    return data.check_dataset(name, root, decode=decode)


def list_methods() -> dict[str, str]:
    """Registered method names, in registration order (CLIPFit and its variants first), and each one's
    one-line description."""
    from .methods import METHODS

    return {name: cls.description for name, cls in METHODS.items()}


def list_models() -> dict[str, dict[str, bool]]:
    """Every open_clip architecture (and the built-in mini CLIP) with its pretrained tags, each True where its
    weights are on this disk already (the Hugging Face cache, open_clip's download folder, the package)."""
    from .backbone import BUILTIN, BUILTIN_WEIGHTS, architectures

    models = {
        name: {tag: _weights_on_disk(name, tag) for tag in open_clip.list_pretrained_tags_by_model(name)}
        for name in architectures()
    }
    for name, path in BUILTIN_WEIGHTS.items():
        models.setdefault(name, {})[BUILTIN] = path.is_file()
    return models


def _weights_on_disk(model: str, tag: str) -> bool:
    """Whether an open_clip release is cached: in the Hugging Face cache, or in open_clip's own download
    folder (~/.cache/clip) for the ones it fetches from a URL (OpenAI's)."""
    import huggingface_hub

    cfg = open_clip.get_pretrained_cfg(model, tag)
    if cfg.get("hf_hub"):
        repo_id, filename = os.path.split(cfg["hf_hub"])
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        return any(isinstance(huggingface_hub.try_to_load_from_cache(repo_id, name), str) for name in names)
    url = cfg.get("url", "")
    return bool(url) and (Path.home() / ".cache" / "clip" / os.path.basename(url)).is_file()


def list_datasets() -> dict[str, str]:
    return {name: spec.title or name for name, spec in sorted(data.DATASETS.items())}


def dataset_aliases() -> dict[str, str]:
    """Every dataset alias (`clipfit.registry.Registry.register_alias`) and the dataset it names."""
    return data.DATASETS.aliases()
