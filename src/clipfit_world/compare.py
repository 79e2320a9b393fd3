"""The built-in models side by side: what issue "a built-in CLIP strong enough" asks to measure, one command.

`compare_models` runs (or, with ``run_missing=False``, only reads) on every mini task with training images (or
those of ``tasks``, `--tasks`),
for each built-in model, each method with its own paper's recipe:

- zero-shot accuracy on all classes (the transfer the pretraining gives);
- a linear probe on every training image (``--shots 0``): how good the frozen image features are, the
  ceiling a few-shot method on the image side works under;
- 16-shot base-to-new (mean over seeds, HM of the mean Base and New over tasks, as the papers average) of
  zero-shot, CLIPFit, its text half alone (`clipfit-no-ln`: the text MLP output biases with distillation),
  its image half alone (`ln-only`) and CLIPFit without distillation (`clipfit-no-kd`);
- how far CLIPFit moved the class text features: 1 - cos between each base class's tuned and pretrained
  feature (`methods.base.feature_distance`), mean over classes, seeds and tasks, for `clipfit` and
  `clipfit-no-ln`, read back from each seed's adapter.

The runs are the mini-world table's own folders (`tables.table_out(model)`): the zero-shot and base-to-new
CLIPFit cells either command finished are reused by the other (the linear probe on every image and the
ablations are this command's own). `clipfit table builtin-models` prints the Markdown table and, with
``--readme``, writes it between the README's ``builtin-models`` markers.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from clipfit import defaults
from clipfit.methods.base import feature_distance
from clipfit.runner import load_run, resolve, run
from clipfit.store import seed_dir
from clipfit.tables import base_new_average
from clipfit_world.defaults import BUILTIN_MODELS
from clipfit_world.model import require_weights
from clipfit_world.tables import MiniWorldTableConfig, _setting, finished_summary, table_out
from clipfit_world.tasks import WORLD_TASKS

README_NAME = "builtin-models"
BASE_TO_NEW = ("zeroshot", "clipfit", "clipfit-no-ln", "ln-only", "clipfit-no-kd")
DRIFT = ("clipfit", "clipfit-no-ln")  # the methods that tune the text tower's biases


@dataclass
class CompareConfig:
    models: list[str] = field(default_factory=lambda: list(BUILTIN_MODELS))
    tasks: list[str] = field(default_factory=lambda: [t for t, task in WORLD_TASKS.items() if task.parent is None])
    seeds: list[int] = field(default_factory=lambda: list(defaults.SEEDS))
    shots: int = 16
    # None: each method's own epochs (its paper's recipe); a number overrides them all (tests).
    epochs: int | None = None
    data_root: str = field(default_factory=lambda: str(defaults.default_data_root()))
    # None: each model's mini-world table folder (`tables.table_out`), so finished cells are shared.
    out: str | None = None
    run_missing: bool = True


def _table(compare: CompareConfig, model: str) -> MiniWorldTableConfig:
    return MiniWorldTableConfig(model=model, tasks=compare.tasks, seeds=compare.seeds, shots=compare.shots,
                                epochs=compare.epochs, data_root=compare.data_root,
                                out=table_out(model) if compare.out is None else f"{compare.out}/{model}")


def class_feature_drift(seed_folder: Path) -> float:
    """1 - mean cos between the tuned and the pretrained class text features of a finished CLIPFit-family seed
    folder (its base classes, its template), as CLIPFit's distillation term measures it."""
    _, method = load_run(seed_folder, device="cpu")
    with torch.no_grad():
        method.prepare_training()  # the pretrained model's class features, the distillation target
        return float(feature_distance(method.class_features(), method.pretrained_class_features))


def compare_models(compare: CompareConfig, progress: bool = True) -> dict[str, dict]:
    """model -> {"zeroshot_all", "linear_probe_all": mean accuracy over tasks (None: not finished),
    "base2new": {method: {base, new, hm} or None}, "drift": {method: mean 1 - cos or None}}."""
    def execute(config):
        if compare.run_missing:
            return run(config, progress=progress, echo=False)
        return finished_summary(config)

    def mean_accuracy(summaries):
        return None if None in summaries else statistics.fmean(s["mean"]["accuracy"] for s in summaries)

    for model in compare.models:  # before any run: one model without weights would stop the table half-way
        require_weights(model)
    out = {}
    for model in compare.models:
        table = _table(compare, model)
        zero = [execute(_setting(table, t, "zeroshot", "few-shot", compare.seeds[:1])) for t in compare.tasks]
        probe = [execute(_setting(table, t, "linear-probe", "few-shot", compare.seeds, shots=0))
                 for t in compare.tasks]
        base2new, drift = {}, {}
        for method in BASE_TO_NEW:
            seeds = compare.seeds[:1] if method == "zeroshot" else compare.seeds  # zero-shot has no seed
            configs = [_setting(table, t, method, "base2new", seeds) for t in compare.tasks]
            summaries = [execute(c) for c in configs]
            base2new[method] = None if None in summaries else base_new_average([s["mean"] for s in summaries])
            if method in DRIFT:
                drift[method] = None if None in summaries else statistics.fmean(
                    class_feature_drift(seed_dir(resolve(c), s)) for c in configs for s in seeds)
        out[model] = {"zeroshot_all": mean_accuracy(zero), "linear_probe_all": mean_accuracy(probe),
                      "base2new": base2new, "drift": drift}
    return out


def to_markdown(compare: CompareConfig, results: dict[str, dict]) -> str:
    """One row per measure, one column per model; "…" where a cell's runs have not all finished."""
    def num(value, fmt="{:.1f}"):
        return "…" if value is None else fmt.format(value)

    def b2n(cell):
        return "…" if cell is None else " / ".join(f"{cell[k]:.1f}" for k in ("base", "new", "hm"))

    models = list(results)
    seeds = " ".join(map(str, compare.seeds))
    lines = [f"| mean over {len(compare.tasks)} tasks | " + " | ".join(f"`{m}`" for m in models) + " |",
             "|---|" + "---:|" * len(models)]
    lines.append("| zero-shot, all classes | " + " | ".join(num(results[m]["zeroshot_all"]) for m in models) + " |")
    lines.append(f"| linear probe, every training image (seeds {seeds}) | "
                 + " | ".join(num(results[m]["linear_probe_all"]) for m in models) + " |")
    for method in BASE_TO_NEW:
        lines.append(f"| `{method}` {compare.shots}-shot base-to-new, Base / New / HM | "
                     + " | ".join(b2n(results[m]["base2new"][method]) for m in models) + " |")
    for method in DRIFT:
        lines.append(f"| `{method}`: class text features moved, 1 - cos | "
                     + " | ".join(num(results[m]["drift"][method], "{:.2e}") for m in models) + " |")
    return "\n".join(lines)
