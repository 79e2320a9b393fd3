"""Accuracy-bearing tests on the built-in mini CLIPs and the mini world: the README's zero-shot numbers
are reproduced, CLIPFit and a prompt learner raise base accuracy, distillation keeps the tuned text features
near the pretrained ones, and a saved adapter gives the same accuracy after reload."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from clipfit import api, data
from clipfit.backbone import load_backbone
from clipfit.config import OptimConfig
from clipfit.engine import evaluate, train
from clipfit.methods import build_method
from clipfit_world.model import MODELS
from clipfit_world.tables import readme_names
from clipfit_world.tasks import WORLD_TASKS

pytestmark = pytest.mark.slow  # each test trains or evaluates on the mini world: 15-40 s

README = Path(__file__).parents[1] / "README.md"
TASK = "mini_textures"
# Measured: 4-shot base accuracy 64.7 zero-shot -> 71.3 after 10 epochs of CLIPFit at lr 0.01 (seed 1,
# one step an epoch: 20 base images at batch 16, the partial batch dropped); the test asks for 4 of the 6.7.
MARGIN = 4.0


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mini-world")


def readme_zero_shot(model: str) -> dict[str, float]:
    """Task -> zero-shot accuracy (all classes), as the README's mini-world table on ``model`` states it."""
    text = README.read_text()
    name = readme_names(model)[0]
    table = text[text.index(f"<!-- {name}:start -->"):text.index(f"<!-- {name}:end -->")]
    return {m[1]: float(m[2]) for m in re.finditer(r"^\| (mini_\w+) \| \d+ \| ([\d.]+) \|", table, re.M)}


def datasets(backbone, splits):
    p = backbone.preprocess
    return (data.ImageDataset(splits.train, data.train_transform(p.image_size, p.mean, p.std)),
            data.ImageDataset(splits.test, data.test_transform(p.image_size, p.mean, p.std)))


@pytest.fixture(scope="module", params=MODELS)
def zero_shot(request, mini_root) -> tuple[str, dict[str, tuple[float, int, int]]]:
    """(model, task -> (zero-shot accuracy in %, test images, classes)) of each built-in model, every mini task."""
    backbone = load_backbone(request.param, "builtin")
    measured = {}
    for task in WORLD_TASKS:
        splits = data.load_dataset(task, mini_root)
        method = build_method("zeroshot", backbone, splits.classnames, splits.template)
        accuracy = evaluate(method, datasets(backbone, splits)[1], progress=False)["accuracy"]
        measured[task] = (accuracy, len(splits.test), len(splits.classnames))
    return request.param, measured


def test_builtin_weights_give_the_zero_shot_accuracy_written_in_the_readme(zero_shot):
    model, measured = zero_shot
    stated = readme_zero_shot(model)
    assert set(stated) == set(WORLD_TASKS)
    for task, accuracy in stated.items():
        assert measured[task][0] == pytest.approx(accuracy, abs=0.5), task


def test_zero_shot_is_above_chance_on_every_task_by_more_than_the_test_set_can_explain(zero_shot):
    # A classifier at chance (1/K) scores a binomial share of n test images: mean p = 1/K, standard error
    # sqrt(p (1 - p) / n). Four standard errors above p happens by luck with probability under 3.2e-5 (one-
    # sided normal tail), so passing says the model transfers, not that the draw was kind. The closest: mini_shapes,
    # 17.7% on mini-clip against a bound of 16.9% (p 0.1, n 300); on mini-clip-b 31.7%.
    model, measured = zero_shot
    assert set(measured) == set(WORLD_TASKS)
    for task, (accuracy, n, classes) in measured.items():
        p = 1 / classes
        bound = p + 4 * math.sqrt(p * (1 - p) / n)
        assert accuracy / 100 > bound, f"{model} on {task}: {accuracy:.1f}% is within 4 standard errors of chance"


def fewshot_base(root, shots=4, seed=1):
    splits = data.fewshot(data.load_dataset(TASK, root), shots, seed)
    return data.subsample_classes(splits, "base")


def tuned(root, options, epochs=10, lr=0.01, method="clipfit"):
    splits = fewshot_base(root)
    backbone = load_backbone("mini-clip", "builtin")
    torch.manual_seed(1)  # a prompt learner's random context
    method = build_method(method, backbone, splits.classnames, splits.template, options)
    train_set, test_set = datasets(backbone, splits)
    train(method, train_set, OptimConfig(epochs=epochs, batch_size=16, warmup_epochs=0, lr=lr), seed=1, progress=False)
    return method, test_set


def test_clipfit_raises_base_accuracy_over_zero_shot(mini_root):
    splits = fewshot_base(mini_root)
    backbone = load_backbone("mini-clip", "builtin")
    zero = build_method("zeroshot", backbone, splits.classnames, splits.template)
    zero_accuracy = evaluate(zero, datasets(backbone, splits)[1], progress=False)["accuracy"]
    method, test_set = tuned(mini_root, {"beta": 8.0})
    assert evaluate(method, test_set, progress=False)["accuracy"] >= zero_accuracy + MARGIN


def test_prompt_learner_raises_base_accuracy_over_zero_shot(mini_root):
    # Measured: 4-shot base accuracy 64.7 zero-shot -> 74.0 after 20 epochs of CoOp (16 random context
    # vectors, its few-shot default) at lr 0.01 (seed 1); the test asks for 5 of the 9.3. With the context
    # initialised from "a photo of a": 68.0; MaPLe (depth 3, 10 epochs): 70.0.
    splits = fewshot_base(mini_root)
    backbone = load_backbone("mini-clip", "builtin")
    zero = build_method("zeroshot", backbone, splits.classnames, splits.template)
    zero_accuracy = evaluate(zero, datasets(backbone, splits)[1], progress=False)["accuracy"]
    method, test_set = tuned(mini_root, {}, epochs=20, method="coop")
    assert evaluate(method, test_set, progress=False)["accuracy"] >= zero_accuracy + 5.0


def mean_cosine_to_pretrained(method) -> float:
    with torch.no_grad():
        cosines = torch.nn.functional.cosine_similarity(method.class_features(), method.pretrained_class_features,
                                                        dim=-1)
        return cosines.mean().item()


def test_distillation_keeps_tuned_text_features_closer_to_the_pretrained_ones(mini_root):
    # A large learning rate moves the text biases far enough for the difference to be clear: measured
    # 1 - cos = 0.00458 with the distillation term against 0.00685 without it (20 epochs of one step:
    # 20 base images at batch 16, the partial batch dropped).
    with_kd, _ = tuned(mini_root, {"beta": 8.0, "regularizer": "kd"}, epochs=20, lr=1.0)
    without, _ = tuned(mini_root, {"beta": 8.0, "regularizer": "none"}, epochs=20, lr=1.0)
    drift_with, drift_without = 1 - mean_cosine_to_pretrained(with_kd), 1 - mean_cosine_to_pretrained(without)
    assert 0 < drift_with < 0.85 * drift_without


def test_saved_adapter_reproduces_the_accuracy_after_reload(mini_root, tmp_path):
    config = api.RunConfig(method="clipfit", model="mini-clip", pretrained="builtin", dataset=TASK,
                           data_root=str(mini_root), protocol="base2new", shots=4, seeds=[1],
                           optim=OptimConfig(epochs=3), out=str(tmp_path / "run"))
    metrics = api.run(config, progress=False, echo=False)["per_seed"][0]
    again = api.evaluate_run(tmp_path / "run" / "seed1", progress=False)
    assert (again["base"], again["new"]) == (metrics["base"], metrics["new"])
