"""Prompt ensembles (`--templates`): the CLIP paper's named sets, template files, CLIP's averaging, and what
each method does with an ensemble (uses it for its classifier, for its frozen target, or refuses it).

The averaging is checked against a hand computation with open_clip's own `encode_text` on a tiny random-init
CLIP (Radford et al., ICML 2021, Sec. 3.1.4; openai/CLIP `notebooks/Prompt_Engineering_for_ImageNet.ipynb`:
each template's prompts encoded and L2-normalised, averaged over templates, L2-normalised again). The set
sizes were counted in openai/CLIP @d05afc4 `data/prompts.md` (one line per template in each dataset's
`templates` list) and the notebook's `imagenet_templates`, not read from our own data.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clipfit import api
from clipfit.backbone import load_backbone
from clipfit.cli import main
from clipfit.config import OptimConfig, RunConfig
from clipfit.errors import ClipFitError
from clipfit.export import ExportedModel
from clipfit.methods import METHODS, build_method, get_method
from clipfit.methods.base import Method
from clipfit.runner import load_run, resolve
from clipfit.store import setting
from clipfit.templates import (
    CLIP_DATASET_TEMPLATES,
    check_templates,
    named_set,
    read_templates_file,
    set_names,
    templates_for,
)

from conftest import CLASSNAMES, TINY_MODEL

TEMPLATE = "a photo of a {}."
ENSEMBLE = ["a photo of a {}.", "a blurry photo of the {}.", "art of the {}.", "a {} in a video game."]
CLASSES = CLASSNAMES[:4]

# Counted in openai/CLIP @d05afc4: data/prompts.md per dataset, the notebook's 80 and its 7 selected ones.
CLIP_PAPER_SIZES = {"caltech101": 34, "oxford_pets": 1, "stanford_cars": 8, "oxford_flowers": 1, "food101": 1,
                    "fgvc_aircraft": 2, "sun397": 2, "dtd": 8, "eurosat": 3, "ucf101": 48}
# Where each method's frozen target lives once `prepare_training` has run (the "target" role).
TARGETS = {"clipfit": "pretrained_class_features", "clipfit-no-ln": "pretrained_class_features",
           "kgcoop": "handcrafted_features", "kgcoop+ln": "handcrafted_features", "prograd": "teacher_features"}


def role(name: str) -> str | None:
    cls = get_method(name)
    return cls.templates_role(cls.protocol_defaults("base2new", "imagefolder"))


def make(name: str, templates=None, template=TEMPLATE, **options) -> Method:
    """Method ``name`` on the tiny random-init CLIP (the same weights every time), base-to-new defaults."""
    cls = get_method(name)
    torch.manual_seed(0)
    backbone = load_backbone(TINY_MODEL, "none")
    options = {**cls.protocol_defaults("base2new", "imagefolder"), **options}
    return build_method(name, backbone, list(CLASSES), template, options, templates=templates)


def by_hand(templates: list[str], classnames=CLASSES) -> torch.Tensor:
    """CLIP's ensemble computed with open_clip's own full-length `encode_text`, nothing of ours."""
    torch.manual_seed(0)
    backbone = load_backbone(TINY_MODEL, "none")
    per_template = []
    with torch.no_grad():
        for template in templates:
            tokens = backbone.tokenizer([template.format(name) for name in classnames])
            per_template.append(F.normalize(backbone.model.encode_text(tokens).float(), dim=-1))
    mean = torch.stack(per_template).mean(dim=0)
    return mean / mean.norm(dim=-1, keepdim=True)


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def colour_images(n: int = 6):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 3, 32, 32, generator=g)


# The named sets ------------------------------------------------------------------------------------------

def test_clip_imagenet_has_the_80_templates_and_its_selection_the_7():
    templates = named_set("clip-imagenet")
    assert len(templates) == 80 == len(set(templates))
    assert templates[0] == "a bad photo of a {}." and templates[-1] == "a tattoo of the {}."
    assert named_set("clip-imagenet-7") == ["itap of a {}.", "a bad photo of the {}.", "a origami {}.",
                                            "a photo of the large {}.", "a {} in a video game.", "art of the {}.",
                                            "a photo of the small {}."]
    assert set(named_set("clip-imagenet-7")) <= set(templates)


@pytest.mark.parametrize("dataset, size", sorted(CLIP_PAPER_SIZES.items()))
def test_each_coop_dataset_has_the_clip_papers_set(dataset, size):
    templates = named_set(f"clip-{dataset}")
    assert len(templates) == size == len(set(templates))
    assert f"clip-{dataset}" in set_names()
    check_templates(f"clip-{dataset}")


def test_the_per_dataset_sets_are_the_ten_coop_targets_and_read_as_the_paper_has_them():
    assert sorted(CLIP_DATASET_TEMPLATES) == sorted(CLIP_PAPER_SIZES)
    assert named_set("clip-eurosat") == ["a centered satellite photo of {}.", "a centered satellite photo of a {}.",
                                         "a centered satellite photo of the {}."]
    assert named_set("clip-oxford_pets") == ["a photo of a {}, a type of pet."]


def test_clip_is_each_datasets_own_set_and_imagenets_for_the_others():
    assert templates_for("clip", "eurosat") == named_set("clip-eurosat")
    assert templates_for("clip", "dtd") == named_set("clip-dtd")
    for other in ("imagenet", "imagenet_v2", "mini_shapes", "imagefolder"):
        assert templates_for("clip", other) == named_set("clip-imagenet")
    assert templates_for("clip-eurosat", "dtd") == named_set("clip-eurosat")  # a named dataset's set stays
    assert templates_for(None, "eurosat") is None


# Template files ------------------------------------------------------------------------------------------

def test_a_file_holds_one_template_a_line_skipping_blanks_and_comments(tmp_path):
    path = write(tmp_path / "t.txt", "\ufeff# my set\n\na photo of a {}.\n  art of the {}.  \r\n# end\n")
    assert read_templates_file(path) == ["a photo of a {}.", "art of the {}."]


@pytest.mark.parametrize("line, message", [
    ("a {} of {}", "must have exactly one '{}'"),
    ("no slot here", "must have exactly one '{}'"),
    ("a {name}", "named field"),
    ("a photo of a {}.", "repeats the template of line 2"),
])
def test_a_file_with_a_bad_line_is_one_error_naming_file_and_line(tmp_path, line, message):
    path = write(tmp_path / "t.txt", f"# set\na photo of a {{}}.\n\n{line}\n")
    with pytest.raises(ClipFitError) as err:
        read_templates_file(path)
    assert str(err.value).startswith(f"{path}:4: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_file_that_is_not_utf8_or_holds_nothing_is_one_error_naming_it(tmp_path):
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"a photo of a {}.\nune photo d'un {} \xe9l\xe9gant.\n")
    with pytest.raises(ClipFitError, match=f"^{latin}:2: not UTF-8"):
        read_templates_file(latin)
    with pytest.raises(ClipFitError, match="holds no template"):
        read_templates_file(write(tmp_path / "empty.txt", "# nothing\n\n"))
    with pytest.raises(ClipFitError, match="is neither .no such file.; a single template goes to --template"):
        check_templates("a photo of a {}.")
    with pytest.raises(ClipFitError, match="is a folder"):
        check_templates(str(tmp_path))


def test_a_bad_template_file_stops_train_in_one_line_naming_file_and_line(eurosat_root, tmp_path, capsys):
    path = write(tmp_path / "t.txt", "a photo of a {}.\na {} and a {}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--method", "zeroshot", "--model", TINY_MODEL, "--pretrained", "none", "--dataset", "eurosat",
              "--data-root", str(eurosat_root), "--templates", str(path), "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"clipfit: error: {path}:2: ") and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_a_list_of_templates_in_a_config_is_checked():
    for bad, message in (([], "at least one"), (["a {}", "a {}"], "repeats"), (["a {} {}"], r"templates\[0\]")):
        with pytest.raises(ClipFitError, match=message):
            check_templates(bad)
    with pytest.raises(ClipFitError, match="'templates' must be a string or a list of strings"):
        RunConfig.from_dict({"templates": 3})


# CLIP's averaging ----------------------------------------------------------------------------------------

def test_the_ensemble_equals_a_hand_computation_of_clips_average():
    method = make("zeroshot", ENSEMBLE)
    with torch.no_grad():
        ours = method.classifier()
    torch.testing.assert_close(ours, by_hand(ENSEMBLE), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ours, by_hand([TEMPLATE]), atol=1e-4)  # the ensemble moved the features


@pytest.mark.parametrize("name", [n for n in METHODS if role(n) is not None])
def test_a_one_template_file_equals_the_single_template_exactly(name, tmp_path):
    templates = read_templates_file(write(tmp_path / "one.txt", f"# just the run's template\n{TEMPLATE}\n"))
    plain, single = make(name), make(name, templates)
    plain.prepare_training(), single.prepare_training()
    with torch.no_grad():
        assert torch.equal(plain.class_features(), single.class_features())
        if name in TARGETS:
            assert torch.equal(getattr(plain, TARGETS[name]), getattr(single, TARGETS[name]))
        images = colour_images()
        assert torch.equal(plain.logits(images, plain.classifier()), single.logits(images, single.classifier()))


# What each method does with an ensemble ------------------------------------------------------------------

@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_uses_an_ensemble_for_what_it_says_or_refuses_it_in_one_line(name, eurosat_root, tmp_path):
    kind = role(name)
    if kind is None:
        with pytest.raises(ClipFitError) as err:
            make(name, ENSEMBLE)
        message = str(err.value)
        assert message.startswith(f"--templates does not apply to method {name!r}: ") and "\n" not in message
        assert get_method(name).templates_refusal({}) in message or "type=vision" in message
        # The run is refused before anything runs, with the same line.
        config = RunConfig(method=name, model=TINY_MODEL, pretrained="none", dataset="eurosat",
                           data_root=str(eurosat_root), templates="clip", out=str(tmp_path / "run"))
        with pytest.raises(ClipFitError, match="--templates does not apply"):
            resolve(config)
        return
    assert name in TARGETS or kind == "classifier", f"add where {name}'s target lives to TARGETS"
    method = make(name, ENSEMBLE)
    method.prepare_training()
    expected = by_hand(ENSEMBLE)
    with torch.no_grad():
        if kind == "classifier":
            torch.testing.assert_close(method.classifier(), expected, rtol=1e-5, atol=1e-6)
        else:  # its classifier stays its own (learned, or trained from the single template); its target moves
            torch.testing.assert_close(getattr(method, TARGETS[name]), expected, rtol=1e-5, atol=1e-6)
            assert torch.equal(method.class_features(), make(name).class_features())


def test_vpt_classifies_with_the_ensemble_with_the_text_classifier_and_refuses_it_with_its_head():
    method = make("vpt-shallow", ENSEMBLE, type="vision-language")
    with torch.no_grad():
        torch.testing.assert_close(method.classifier(), by_hand(ENSEMBLE), rtol=1e-5, atol=1e-6)
    with pytest.raises(ClipFitError, match="with type=vision it classifies with a linear head"):
        make("vpt-shallow", ENSEMBLE)


def test_ln_only_classifies_with_the_ensemble_and_clipfit_with_bias_mse_refuses_it():
    with torch.no_grad():
        torch.testing.assert_close(make("ln-only", ENSEMBLE).classifier(), by_hand(ENSEMBLE), rtol=1e-5, atol=1e-6)
    with pytest.raises(ClipFitError, match="with regularizer=bias-mse it has no frozen target"):
        make("clipfit", ENSEMBLE, regularizer="bias-mse")


def test_clipfit_distils_its_single_template_toward_the_ensemble_so_the_term_starts_above_zero():
    images = colour_images(4)
    labels = torch.arange(4)
    plain, ensemble = make("clipfit"), make("clipfit", ENSEMBLE)
    plain.prepare_training(), ensemble.prepare_training()
    assert plain.training_loss(images, labels).term_values()["kd"] == 0.0
    kd = ensemble.training_loss(images, labels).term_values()["kd"]
    features = make("clipfit").class_features()
    assert kd == pytest.approx(1 - F.cosine_similarity(features, by_hand(ENSEMBLE)).mean().item(), rel=1e-4)


def test_a_prompt_too_long_for_the_context_in_one_template_is_refused_naming_it():
    long = "a photo of " + "very " * 80 + "{}."
    with pytest.raises(ClipFitError, match="longer than the text tower's context.*of --templates"):
        make("zeroshot", [TEMPLATE, long])


# Run identity, adapter files, evaluation -----------------------------------------------------------------

def test_an_edited_template_file_changes_the_runs_identity(eurosat_root, tmp_path):
    path = write(tmp_path / "t.txt", "a photo of a {}.\nart of the {}.\n")

    def resolved():
        return resolve(RunConfig(method="zeroshot", model=TINY_MODEL, pretrained="none", dataset="eurosat",
                                 data_root=str(eurosat_root), templates=str(path)))

    first = resolved()
    assert first.templates == ["a photo of a {}.", "art of the {}."]  # the templates themselves, not the path
    assert setting(first)["templates"] == first.templates
    write(path, "a photo of a {}.\na sketch of the {}.\n")
    second = resolved()
    assert second.out != first.out and setting(second) != setting(first)
    plain = resolve(RunConfig(method="zeroshot", model=TINY_MODEL, pretrained="none", dataset="eurosat",
                              data_root=str(eurosat_root)))
    assert "templates" not in setting(plain)  # runs without an ensemble keep their folders
    assert resolve(RunConfig.from_dict(json.loads(first.to_json()))).out == first.out  # its record re-runs it


@pytest.mark.parametrize("name", [n for n in METHODS if role(n) is not None])
def test_an_adapter_saved_with_templates_reloads_to_the_same_logits(name, tmp_path):
    method = make(name, ENSEMBLE)
    path = method.save_pretrained(tmp_path / "adapter.safetensors")
    loaded = Method.from_pretrained(path, device="cpu")
    assert loaded.templates == ENSEMBLE
    images = colour_images()
    with torch.no_grad():
        assert torch.equal(method.logits(images, method.classifier()), loaded.logits(images, loaded.classifier()))
    if name in TARGETS:
        method.prepare_training(), loaded.prepare_training()
        assert torch.equal(getattr(method, TARGETS[name]), getattr(loaded, TARGETS[name]))


def test_a_zero_shot_run_with_templates_evaluates_exports_and_reevaluates_as_it_classified(eurosat_root, tmp_path):
    path = write(tmp_path / "t.txt", "\n".join(ENSEMBLE) + "\n")
    config = RunConfig(method="zeroshot", model=TINY_MODEL, pretrained="none", dataset="eurosat",
                       data_root=str(eurosat_root), protocol="few-shot", seeds=[1], templates=str(path),
                       out=str(tmp_path / "run"))
    summary = api.run(config, progress=False, echo=False)
    seed = tmp_path / "run" / "seed1"
    _, method = load_run(seed, device="cpu")
    assert method.templates == ENSEMBLE
    again = api.evaluate_run(seed, device="cpu", progress=False)
    assert again["accuracy"] == summary["per_seed"][0]["accuracy"]
    # Exported for plain open_clip, it classifies with the ensemble's features.
    api.export(seed, tmp_path / "model.safetensors")
    exported = ExportedModel(tmp_path / "model.safetensors")
    images = colour_images()
    with torch.no_grad():
        torch.testing.assert_close(exported.logits(images), method.logits(images, method.classifier()),
                                   rtol=1e-4, atol=1e-4)
    # Another ensemble at evaluation time; a learned-prompt run refuses one.
    api.evaluate_run(seed, templates="clip", device="cpu", progress=False)
    coop = RunConfig(method="coop", model=TINY_MODEL, pretrained="none", dataset="eurosat", data_root=str(eurosat_root),
                     protocol="few-shot", shots=1, seeds=[1], optim=OptimConfig(epochs=1), out=str(tmp_path / "coop"))
    api.run(coop, progress=False, echo=False)
    with pytest.raises(ClipFitError, match="--templates does not apply to method 'coop': its classifier is the "):
        api.evaluate_run(tmp_path / "coop" / "seed1", templates="clip", device="cpu", progress=False)


# The README's measured numbers ---------------------------------------------------------------------------

README = Path(__file__).parents[1] / "README.md"


def readme_ensemble_table() -> dict[str, tuple[float, float, float]]:
    """Task -> (single template, caption-prefix file, clip) as the README's prompt-ensemble section states."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Prompt ensembles"):]
    section = section[:section.index("\n#")]
    rows = re.finditer(r"^\| (mini_\w+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", section, re.M)
    return {m[1]: (float(m[2]), float(m[3]), float(m[4])) for m in rows}


@pytest.mark.slow  # 18 zero-shot evaluations of the mini CLIP on the mini world: about a minute
def test_the_readmes_zero_shot_numbers_with_and_without_an_ensemble_are_measured(tmp_path):
    from clipfit import data
    from clipfit.engine import evaluate
    from clipfit_world.scenes import PREFIXES

    stated = readme_ensemble_table()
    assert len(stated) == 6
    backbone = load_backbone("mini-clip", "builtin")
    p = backbone.preprocess
    for task, accuracies in stated.items():
        splits = data.load_dataset(task, tmp_path)
        inner = splits.template.removeprefix("a photo of ").removesuffix(".")
        prefixes = [prefix.format(inner) + "." for prefix in dict.fromkeys(PREFIXES)]
        test_set = data.ImageDataset(splits.test, data.test_transform(p.image_size, p.mean, p.std))
        for templates, accuracy in zip((None, prefixes, templates_for("clip", task)), accuracies):
            method = build_method("zeroshot", backbone, splits.classnames, splits.template, templates=templates)
            measured = evaluate(method, test_set, progress=False)["accuracy"]
            assert measured == pytest.approx(accuracy, abs=0.05), (task, templates and len(templates))
