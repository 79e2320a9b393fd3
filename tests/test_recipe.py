"""The training recipe around the loss, rule by rule, as Dassl runs it for CoOp and CLIPFit (KaiyangZhou/
Dassl.pytorch @c61a1b5 `dassl/optim/lr_scheduler.py`, `dassl/data/data_manager.py`, with the settings of
minglllli/CLIPFit @4dde049 `configs/trainers/ClipFit/vit_b16.yaml`): schedule, batches per epoch, few-shot
images, augmentation, frozen modules, the distillation target, averages, method defaults, and the recipe
version runs record."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from clipfit import api, data
from clipfit.backbone import Preprocess, load_backbone
from clipfit.cli import main
from clipfit.config import OptimConfig, RunConfig, complete
from clipfit.engine import lr_at, lr_at_epoch, train
from clipfit.errors import ClipFitError
from clipfit.methods import build_method, get_method
from clipfit.protocols import harmonic_mean
from clipfit.runner import image_datasets, resolve
from clipfit.store import RECIPE_VERSION, summarize
from clipfit_world.tables import MiniWorldTableConfig, to_markdown

from conftest import TINY_MODEL, write_image

DATA = Path(__file__).parent / "data"
TINY_RESNET = "tiny-rn"
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def tiny_clipfit(model=TINY_MODEL, classnames=("forest", "river", "highway")):
    return build_method("clipfit", load_backbone(model, "none"), list(classnames), "a photo of {}.", {"beta": 8.0})


def random_images(n, classes=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.TensorDataset(torch.randn(n, 3, size, size, generator=g), torch.arange(n) % classes)


# 1. Learning-rate schedule ---------------------------------------------------------------------------

def test_schedule_for_10_epochs_is_dassls_warmup_then_cosine_counted_from_the_end_of_the_warmup():
    # Worked out from the rule for T = 10, W = 1, lr 0.002: epoch 1 runs at the base lr, epoch e >= 1 at
    # 0.001 * (1 + cos(pi * (e - 1) / 10)).
    expected = [1e-5, 0.002, 0.0019510565, 0.0018090170, 0.0015877853, 0.0013090170,
                0.0010000000, 0.0006909830, 0.0004122147, 0.0001909830]
    optim = OptimConfig(epochs=10)
    lrs = [lr_at_epoch(optim, e) for e in range(10)]
    assert lrs == pytest.approx(expected, abs=1e-10)
    assert sum(lrs) == pytest.approx(0.010961, abs=1e-6)  # Dassl's warm-up + cosine; the old one: 0.00901


@pytest.mark.parametrize("warmup", [0, 1, 2])
def test_schedule_for_100_epochs_steps_torchs_cosine_once_per_epoch_after_the_warmup(warmup):
    # The oracle is torch's own CosineAnnealingLR (T_max = 100), stepped once per epoch after the warm-up,
    # as Dassl's ConstantWarmupScheduler hands over to it.
    optim = OptimConfig(epochs=100, lr=0.002, warmup_epochs=warmup)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=optim.lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)
    expected = [complete(optim).warmup_lr] * warmup
    while len(expected) < 100:
        expected.append(cosine.get_last_lr()[0])
        opt.step()
        cosine.step()
    assert [lr_at_epoch(optim, e) for e in range(100)] == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_training_runs_each_epoch_at_the_scheduled_lr():
    method = tiny_clipfit()
    history = train(method, random_images(8), OptimConfig(epochs=3, batch_size=8, lr=0.01), seed=1, progress=False)
    assert [h["lr"] for h in history] == pytest.approx([1e-5, 0.01, 0.005 * (1 + math.cos(math.pi / 3))])


def test_cosine_per_iteration_is_torchs_cosine_annealing_stepped_after_every_batch():
    # Tip-Adapter-F's and CLIP-LoRA's scheduler: CosineAnnealingLR(T_max = all iterations, eta_min) stepped
    # after each optimiser step, no warm-up.
    optim = complete(OptimConfig(iterations=50, lr=2e-4, schedule="cosine-iterations", min_lr=1e-6, warmup_epochs=0))
    opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=optim.lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50, eta_min=1e-6)
    expected = []
    for _ in range(50):
        expected.append(cosine.get_last_lr()[0])
        opt.step()
        cosine.step()
    assert [lr_at(optim, 0, t, 50) for t in range(50)] == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_a_budget_of_iterations_runs_that_many_adamw_steps_across_epochs(monkeypatch):
    method = tiny_clipfit()
    lrs = []
    real = torch.optim.AdamW.step
    def step(self, *args, **kwargs):
        lrs.append(self.param_groups[0]["lr"])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    optim = OptimConfig(iterations=7, batch_size=8, lr=0.01, optimizer="adamw", schedule="cosine-iterations",
                        warmup_epochs=0, eps=1e-4, weight_decay=0.01)
    history = train(method, random_images(16), optim, seed=1, progress=False)  # 2 steps per epoch: 4 epochs, 7 steps
    assert len(lrs) == 7 and [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert lrs == pytest.approx([0.005 * (1 + math.cos(math.pi * t / 7)) for t in range(7)])


def test_given_epochs_replace_a_methods_iteration_budget_and_the_other_way_round():
    lora = {"iterations": 8000, "epochs": None, "schedule": "cosine-iterations"}
    assert complete(OptimConfig(epochs=3), lora).iterations is None
    assert complete(OptimConfig(iterations=40), {"epochs": 100}).epochs is None
    assert complete(OptimConfig(), lora).iterations == 8000


# 2. Batches per epoch --------------------------------------------------------------------------------

@pytest.mark.parametrize("images, batch_size, steps", [(80, 32, 2), (64, 32, 2), (20, 32, 1), (33, 8, 4)])
def test_training_drops_the_last_partial_batch_when_the_set_holds_a_full_one(images, batch_size, steps, monkeypatch):
    method = tiny_clipfit()
    sizes = []
    real = method.training_loss
    monkeypatch.setattr(method, "training_loss", lambda x, y: sizes.append(len(y)) or real(x, y))
    optim = OptimConfig(epochs=1, batch_size=batch_size, warmup_epochs=0)
    train(method, random_images(images), optim, seed=1, progress=False)
    assert len(sizes) == steps
    assert sizes == [min(batch_size, images)] * steps


# 3. Few-shot images ------------------------------------------------------------------------------------

def coop_dataset_from_split(root: Path, split_file: Path) -> Path:
    """A CoOp-layout EuroSAT whose split file is `split_file`, with a tiny image at every path it lists."""
    split = json.loads(split_file.read_text())
    folder = root / "eurosat"
    rng = np.random.default_rng(0)
    for rows in split.values():
        for rel, label, _ in rows:
            write_image(folder / "2750" / rel, (40 * label, 255 - 40 * label, 128), rng, size=8)
    (folder / "split_zhou_EuroSAT.json").write_text(split_file.read_text())
    return root


@pytest.fixture(scope="module")
def dassl_draws():
    return json.loads((DATA / "dassl_fewshot_draws.json").read_text())["draws"]


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("shots", [1, 2, 4, 8, 16])
def test_fewshot_draw_is_the_one_dassls_own_sampler_made(seed, shots, dassl_draws, tmp_path):
    # tests/data/dassl_fewshot_draws.json: Dassl's generate_fewshot_dataset and CoOp's read_split run on
    # tests/data/dassl_split.json (its "produced_by" says which commits and how).
    image_dir = tmp_path / "eurosat" / "2750"
    names, rows = data.readers.parse_coop_split(DATA / "dassl_split.json", image_dir)
    splits = data.DatasetSplits("eurosat", names, "{}", rows["train"], rows["val"], rows["test"], None)
    out = data.fewshot(splits, shots, seed)
    expected = dassl_draws[f"seed{seed}-shot{shots}"]
    assert [s.path.relative_to(image_dir).as_posix() for s in out.train] == expected["train"]
    assert [s.path.relative_to(image_dir).as_posix() for s in out.val] == expected["val"]


def test_clipfit_train_on_a_coop_layout_dataset_trains_on_the_images_coop_draws(dassl_draws, tmp_path, monkeypatch):
    import clipfit.runner as runner

    root = coop_dataset_from_split(tmp_path / "data", DATA / "dassl_split.json")
    trained_on = {}
    real_train = runner.train

    def recording_train(method, dataset, optim, *, seed, **kwargs):
        trained_on[seed] = [s.path.relative_to(root / "eurosat" / "2750").as_posix() for s in dataset.samples]
        return real_train(method, dataset, optim, seed=seed, **kwargs)

    monkeypatch.setattr(runner, "train", recording_train)
    main(["train", "--model", TINY_MODEL, "--pretrained", "none", "--dataset", "eurosat", "--data-root", str(root),
          "--shots", "4", "--seeds", "1", "2", "3", "--epochs", "1", "--no-progress", "--out", str(tmp_path / "run")])
    assert trained_on == {seed: dassl_draws[f"seed{seed}-shot4"]["train"] for seed in (1, 2, 3)}


# 4. Augmentation ------------------------------------------------------------------------------------

def reference_train_transform():
    """Dassl's train transform as CLIPFit's configs build it, on the decoded file (`read_image`)."""
    return T.Compose([T.RandomResizedCrop(224, scale=(0.08, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                      T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.jpg"
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, size=(375, 500, 3), dtype=np.uint8)).save(path)
    return path


def training_set(photo, **config):
    backbone = SimpleNamespace(preprocess=Preprocess(224, MEAN, STD))
    train_dataset, test_dataset = image_datasets(backbone, RunConfig(**config))
    return train_dataset([data.Sample(photo, 0, "x")]), test_dataset([data.Sample(photo, 0, "x")])


@pytest.mark.parametrize("image_cache_mb", [4096, 0])
def test_training_crops_are_the_reference_transforms_bit_for_bit_cached_or_not(photo, image_cache_mb):
    train_set, _ = training_set(photo, image_cache_mb=image_cache_mb)
    reference = reference_train_transform()
    for state in range(6):  # every read, the first (decoding) and the later ones (from the cache)
        torch.manual_seed(state)
        ours = train_set[0][0]
        torch.manual_seed(state)
        assert torch.equal(ours, reference(Image.open(photo).convert("RGB"))), state
    assert train_set.cached_bytes == (500 * 375 * 4 if image_cache_mb else 0)


def test_the_resized_cache_is_opt_in_and_really_differs_from_the_reference(photo):
    approximate, _ = training_set(photo, image_cache="resized-approximate")
    torch.manual_seed(0)
    ours = approximate[0][0]
    torch.manual_seed(0)
    assert not torch.equal(ours, reference_train_transform()(Image.open(photo).convert("RGB")))
    assert RunConfig().image_cache == "decoded"


def test_evaluation_images_are_never_held_in_memory(photo):
    _, test_set = training_set(photo)
    test_set[0], test_set[0]
    assert test_set.cache_bytes == 0 and test_set.cached_bytes == 0


def test_an_approximate_run_says_so_in_its_config_and_log(eurosat_root, tmp_path):
    out = tmp_path / "run"
    api.run(RunConfig(model=TINY_MODEL, pretrained="none", dataset="eurosat", data_root=str(eurosat_root), shots=2,
                      seeds=[1], optim=OptimConfig(epochs=1), image_cache="resized-approximate", out=str(out)),
            progress=False, echo=False)
    assert json.loads((out / "seed1" / "config.json").read_text())["image_cache"] == "resized-approximate"
    assert "is APPROXIMATE" in (out / "seed1" / "log.txt").read_text()


def test_a_config_from_before_the_decoded_cache_reads_as_the_cache_it_ran_with():
    assert RunConfig.from_dict({"cache_images": True}).image_cache == "resized-approximate"
    assert RunConfig.from_dict({"cache_images": False}).image_cache == "none"


# 5. Frozen modules stay frozen ------------------------------------------------------------------------

def test_a_resnet_towers_batchnorm_statistics_do_not_move_during_training():
    method = tiny_clipfit(TINY_RESNET)
    assert method.notes and not method.image_norms  # a ResNet has no LayerNorm: only the text biases train
    running = {n: b.clone() for n, b in method.clip.named_buffers() if "running" in n or "num_batches" in n}
    assert len(running) == 57  # 19 BatchNorms: mean, var and count each
    modes = []
    for module in method.clip.modules():
        module.register_forward_pre_hook(lambda m, args: modes.append(m.training))
    train(method, random_images(16), OptimConfig(epochs=2, batch_size=8, lr=0.5), seed=1, progress=False)
    assert modes and not any(modes)
    for name, before in running.items():
        assert torch.equal(dict(method.clip.named_buffers())[name], before), name


def test_a_resnet_run_is_rebuilt_from_its_folder_with_the_accuracy_it_measured(eurosat_root, tmp_path):
    out = tmp_path / "rn"
    config = RunConfig(model=TINY_RESNET, pretrained="none", dataset="eurosat", data_root=str(eurosat_root),
                       protocol="base2new", shots=4, seeds=[1], optim=OptimConfig(epochs=2, batch_size=4, lr=0.5),
                       out=str(out))
    metrics = api.run(config, progress=False, echo=False)["per_seed"][0]
    again = api.evaluate_run(out / "seed1", progress=False)
    assert (again["base"], again["new"]) == (metrics["base"], metrics["new"])


def test_after_training_the_method_is_in_eval_mode_and_its_backbone_never_left_it():
    method = tiny_clipfit()
    method.train()
    assert method.training and not any(m.training for m in method.clip.modules())
    method.eval()
    assert not method.training


# 6. The distillation target --------------------------------------------------------------------------

def test_every_training_run_distils_toward_the_untouched_pretrained_features():
    method = tiny_clipfit()
    with torch.no_grad():
        pretrained = method.class_features()
    optim = OptimConfig(epochs=3, batch_size=8, lr=0.5, warmup_epochs=0)
    train(method, random_images(8), optim, seed=1, progress=False)
    with torch.no_grad():
        tuned = method.class_features()
    assert (tuned - pretrained).abs().max() > 1e-3  # the first run moved the text features
    train(method, random_images(8, seed=1), optim, seed=2, progress=False)
    torch.testing.assert_close(method.pretrained_class_features, pretrained, rtol=0, atol=1e-6)


def test_an_adapter_loaded_before_training_is_not_the_distillation_target():
    first = tiny_clipfit()
    train(first, random_images(8), OptimConfig(epochs=3, batch_size=8, lr=0.5, warmup_epochs=0), seed=1, progress=False)
    second = tiny_clipfit()
    with torch.no_grad():
        pretrained = second.class_features()
    second.load_adapter_state(first.adapter_state())
    second.prepare_training()
    torch.testing.assert_close(second.pretrained_class_features, pretrained, rtol=0, atol=1e-6)
    for name, p in second.trainable_parameters().items():  # and the tuned values are back in place
        assert torch.equal(p, first.trainable_parameters()[name])


# 7. Averages as the papers report them ----------------------------------------------------------------

def test_the_papers_average_hm_is_the_hm_of_the_mean_base_and_mean_new():
    assert harmonic_mean(83.72, 74.84) == pytest.approx(79.03, abs=0.005)  # CLIPFit Table 1, average row


def test_summary_hm_over_seeds_is_the_hm_of_the_means_and_keeps_the_per_seed_values():
    config = RunConfig(protocol="base2new", seeds=[1, 2], out="x")
    per_seed = [{"seed": 1, "base": 80.0, "new": 40.0, "hm": 160 / 3},
                {"seed": 2, "base": 60.0, "new": 80.0, "hm": 480 / 7}]
    summary = summarize(config, per_seed)
    # HM(70, 60) = 2 * 70 * 60 / 130 = 64.615; the mean of the per-seed HMs would be 60.95.
    assert summary["mean"] == pytest.approx({"base": 70.0, "new": 60.0, "hm": 8400 / 130})
    assert [m["hm"] for m in summary["per_seed"]] == [160 / 3, 480 / 7]
    assert summary["derived_from_means"] == ["hm"]


def test_table_mean_row_hm_is_the_hm_of_the_mean_base_and_mean_new_over_tasks():
    def row(task, base, new):
        return {"task": task, "classes": 10, "zeroshot_all": 50.0,
                "zeroshot": {"base": 50.0, "new": 50.0, "hm": 50.0},
                "methods": {"clipfit": {"mean": {"base": base, "new": new, "hm": harmonic_mean(base, new)},
                                        "std": {"base": 0.0, "new": 0.0, "hm": 0.0}, "seconds": 1.0}}}

    rows = [row("mini_a", 80.0, 40.0), row("mini_b", 60.0, 80.0)]
    lines = to_markdown(MiniWorldTableConfig(seeds=[1]), rows).splitlines()
    assert "HM of the mean Base and New" in lines[0]
    assert lines[-1].endswith("| 70.0 / 60.0 / 64.6 |")  # the mean of the two HMs would be 61.0


# 8. Method defaults live in the method ----------------------------------------------------------------

@pytest.mark.contract
@pytest.mark.parametrize("dataset", sorted(data.DATASETS))
def test_clipfit_epochs_and_beta_are_the_papers_for_every_registered_dataset(dataset):
    clipfit = get_method("clipfit")
    assert clipfit.optim_defaults("few-shot", dataset)["epochs"] == (10 if dataset in ("imagenet", "food101") else 100)
    assert clipfit.protocol_defaults("few-shot", dataset)["beta"] == (8.0 if dataset in ("sun397", "dtd") else 2.0)
    assert clipfit.protocol_defaults("base2new", dataset)["beta"] == 8.0


def test_a_resolved_config_takes_the_methods_defaults_unless_the_user_set_them():
    dtd = resolve(RunConfig(dataset="dtd", protocol="few-shot"))
    assert (dtd.optim.epochs, dtd.method_options["beta"]) == (100, 8.0)
    food = resolve(RunConfig(dataset="food101", protocol="base2new", optim=OptimConfig(epochs=3)))
    assert (food.optim.epochs, food.method_options["beta"]) == (3, 8.0)


# Also: a finished run from before these changes is redone, not reused ----------------------------------

def test_a_run_finished_under_an_older_recipe_is_redone_and_says_why(eurosat_root, tmp_path, capsys):
    config = RunConfig(model=TINY_MODEL, pretrained="none", dataset="eurosat", data_root=str(eurosat_root), shots=2,
                       seeds=[1], optim=OptimConfig(epochs=1), out=str(tmp_path / "run"))
    api.run(config, progress=False, echo=False)
    metrics_file = tmp_path / "run" / "seed1" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    assert metrics["recipe"] == RECIPE_VERSION
    # As every run written before the recipe was recorded: no recipe, and the old image-cache field.
    del metrics["recipe"]
    metrics_file.write_text(json.dumps(metrics))
    config_file = tmp_path / "run" / "seed1" / "config.json"
    old_config = json.loads(config_file.read_text())
    del old_config["image_cache"], old_config["image_cache_mb"]
    config_file.write_text(json.dumps({**old_config, "cache_images": True}))
    api.run(config, progress=False, echo=True)
    assert f"finished under training recipe 1, not the current {RECIPE_VERSION}" in capsys.readouterr().out
    assert json.loads(metrics_file.read_text())["recipe"] == RECIPE_VERSION
    assert json.loads(config_file.read_text())["image_cache"] == "decoded"


def test_an_old_recipe_run_of_another_setting_is_refused_not_overwritten(eurosat_root, tmp_path):
    config = RunConfig(model=TINY_MODEL, pretrained="none", dataset="eurosat", data_root=str(eurosat_root), shots=2,
                       seeds=[1], optim=OptimConfig(epochs=1), out=str(tmp_path / "run"))
    api.run(config, progress=False, echo=False)
    metrics_file = tmp_path / "run" / "seed1" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    del metrics["recipe"]
    metrics_file.write_text(json.dumps(metrics))
    summary_file = tmp_path / "run" / "summary.json"  # and a summary as written before it named its setting
    old_summary = {k: v for k, v in json.loads(summary_file.read_text()).items() if k != "setting"}
    summary_file.write_text(json.dumps(old_summary))
    message = r"seed1: holds a finished run with a different config \(differs in: shots\)"
    with pytest.raises(ClipFitError, match=message):
        api.run(dataclasses.replace(config, shots=4), progress=False, echo=False)
    assert json.loads(metrics_file.read_text()) == metrics
    assert "setting" not in json.loads(summary_file.read_text())
