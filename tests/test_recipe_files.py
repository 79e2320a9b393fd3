"""The recipes as data (`clipfit.recipes`, src/clipfit/recipes/*.yaml): they reproduce, entry for entry, what the
methods' Python recipe branches returned before the move (tests/data/recipes_before_yaml.json, made from
`optim_defaults` / `protocol_defaults` of commit cf053dc), and the reader refuses malformed files."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from clipfit import recipes
from clipfit.errors import ClipFitError
from clipfit.recipes import load_recipe, recipe_defaults, recipe_files, recipe_table_markdown

pytestmark = pytest.mark.contract

SNAPSHOT = json.loads((Path(__file__).parent / "data" / "recipes_before_yaml.json").read_text(encoding="utf-8"))
# The protocols announced beside the registered ones; a rule may name them before they are registered.
ANNOUNCED_PROTOCOLS = {"cross-dataset", "distribution-shift"}
# Cells of the snapshot whose recipe has changed on purpose since, as (method, protocol, dataset) with None for
# any, each with the change; `test_the_studys_vtab_recipes` and `test_kgcoops_transfer_recipe` hold the new values.
CHANGED_SINCE = {
    **{(method, None, "vtab-dtd"): "the PEFT-for-CLIP study's per-task VTAB-1k recipes (vtab-dtd was then unregistered)"
       for method in ("clip-adapter", "vpt-shallow", "vpt-deep")},
    **{(method, protocol, None): "KgCoOp's one ViT-B/16 config (batch 128) for the transfer protocols"
       for method in ("kgcoop", "kgcoop+ln") for protocol in ("cross-dataset", "distribution-shift")},
}


def changed_since(method: str, protocol: str, dataset: str) -> bool:
    return any((method, p, d) in CHANGED_SINCE for p in (protocol, None) for d in (dataset, None))


def exact(value) -> str:
    """A form in which 2 and 2.0 differ (Python's == does not tell them apart)."""
    return json.dumps(value, sort_keys=True)


def test_snapshot_says_what_made_it():
    assert "cf053dc" in SNAPSHOT["made_by"]
    assert {"few-shot", "base2new"} <= set(SNAPSHOT["protocols"])
    assert {"imagefolder", "csv", "imagenet", "mini_digits"} <= set(SNAPSHOT["datasets"])
    assert {1, 2, 4, 8, 16} <= set(SNAPSHOT["shots"])


@pytest.mark.parametrize("method", sorted(SNAPSHOT["methods"]))
def test_recipe_files_reproduce_the_python_branches(method):
    rows = SNAPSHOT["methods"][method]
    cells = {(p, d, s) for protocols, datasets, shots, _, _ in rows for p in protocols for d in datasets for s in shots}
    # The grouped rows cover the whole grid, each combination once.
    assert len(cells) == len(SNAPSHOT["protocols"]) * len(SNAPSHOT["datasets"]) * len(SNAPSHOT["shots"])
    wrong = []
    for protocols, datasets, shots, optim, options in rows:
        for p in protocols:
            for d in datasets:
                if changed_since(method, p, d):
                    continue
                for s in shots:
                    got = recipe_defaults(method, p, d, s)
                    if exact(got) != exact([optim, options]):
                        wrong.append(f"{p} {d} {s}: expected {exact([optim, options])}, got {exact(got)}")
    assert not wrong, f"{len(wrong)} entries differ, e.g.:\n" + "\n".join(wrong[:5])


def test_every_registered_method_has_a_recipe_file():
    from clipfit.methods import METHODS

    files = recipe_files()
    assert sorted(set(METHODS) - set(files)) == []
    assert sorted(set(files) - set(METHODS)) == []  # no file names a method that is not registered
    assert all(path.parent == recipes.RECIPE_DIR for path in files.values())


def test_optim_fields_are_optimconfigs():
    from clipfit import config, engine

    # Where OptimConfig and its choices live (the config module, or the engine that uses them).
    home = config if hasattr(config, "OPTIMIZERS") else engine
    hints = typing.get_type_hints(engine.OptimConfig)
    fields = {f.name: typing.get_args(hints[f.name])[0] for f in dataclasses.fields(engine.OptimConfig)}
    assert fields == recipes.OPTIM_FIELDS
    assert recipes.OPTIMIZERS == tuple(home.OPTIMIZERS) and recipes.SCHEDULES == tuple(home.SCHEDULES)


def test_recipe_options_names_and_conditions_are_registered():
    from clipfit import data, protocols
    from clipfit.methods import METHODS

    datasets = set(data.DATASETS) | set(data.GENERIC_FORMATS)
    known_protocols = set(protocols.PROTOCOLS) | ANNOUNCED_PROTOCOLS
    for method, path in recipe_files().items():
        recipe = load_recipe(path)
        cls = METHODS[method]
        fields = {f.name for f in dataclasses.fields(cls.config_class)}
        for rule in (recipe.defaults, *recipe.rules):
            assert set(rule.when.get("dataset", ())) <= datasets, (path.name, rule.when)
            assert set(rule.when.get("protocol", ())) <= known_protocols, (path.name, rule.when)
            if method not in rule.when.get("method", (method,)):
                continue
            assert set(rule.options) <= fields, (path.name, method, sorted(set(rule.options) - fields))
        for protocol in known_protocols:  # never a default against what a variant fixes
            for dataset in datasets:
                for shots in SNAPSHOT["shots"]:
                    options = recipe_defaults(method, protocol, dataset, shots)[1]
                    assert {k: v for k, v in options.items() if k in cls.preset} == \
                        {k: v for k, v in cls.preset.items() if k in options}, (path.name, method, dataset)


def test_reader_imports_only_the_standard_library_yaml_and_errors():
    code = ("import sys, clipfit.recipes as r; r.recipe_files(); r.recipe_table_markdown(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('clipfit', 'torch', 'numpy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.replace("'", '"')) == ["clipfit", "clipfit.errors", "clipfit.recipes"]


def test_parsed_files_are_cached_and_results_fresh():
    path = recipe_files()["coop"]
    assert load_recipe(path) is load_recipe(path)
    optim, options = recipe_defaults("coop", "base2new", "eurosat", 16)
    optim["epochs"], options["ctx_init"] = 1, "changed"
    assert recipe_defaults("coop", "base2new", "eurosat", 16) == ({"epochs": 200, "batch_size": 32, "lr": 0.002},
                                                                  {"ctx_init": "a photo of a"})


def test_unknown_method_is_a_clipfit_error():
    with pytest.raises(ClipFitError, match="no recipe file names method 'no-such-method'"):
        recipe_defaults("no-such-method", "few-shot", "eurosat", 16)


def test_table_names_every_method_and_is_deterministic():
    table = recipe_table_markdown()
    assert table == recipe_table_markdown()
    lines = table.splitlines()
    assert lines[0].startswith("| Methods | Protocol | Dataset | Shots | Optimisation | Options | Source |")
    rows = sum(1 + len(load_recipe(p).rules) for p in set(recipe_files().values()))
    assert len(lines) == 2 + rows
    for method in recipe_files():
        assert f"`{method}`" in table
    assert "iterations 500 × shots" in table
    only = recipe_table_markdown(["maple", "coop"]).splitlines()
    assert "`maple`" in only[2] and all("`coop`" in line for line in only[4:])


# --------------------------------------------------------------------------------------------------------
# The reader, on files of its own

VALID = """\
methods: [a, b]
defaults:
  optim: {epochs: 10, lr: 1, iterations: {per_shot: 5}}
  options: {beta: 2.0}
  source: a paper
rules:
  - when: {shots: {min: 2, max: 4}}
    optim: {epochs: 20}
    source: a config
  - when: {method: b, protocol: [base2new], dataset: x}
    options: {beta: 8.0, name: "a | b"}
    source: another config
  - when: {shots: 0}
    optim: {iterations: 7}
    source: a choice
"""


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_reader_semantics(tmp_path):
    write(tmp_path, VALID)

    def get(*run):
        return recipe_defaults(*run, directory=tmp_path)

    assert get("a", "few-shot", "x", 1) == ({"epochs": 10, "lr": 1.0, "iterations": 5}, {"beta": 2.0})
    assert exact(get("a", "few-shot", "x", 1)[0]["lr"]) == "1.0"  # a float field reads as a float
    assert get("a", "base2new", "x", 4) == ({"epochs": 20, "lr": 1.0, "iterations": 20}, {"beta": 2.0})
    assert get("b", "base2new", "x", 5) == ({"epochs": 10, "lr": 1.0, "iterations": 25}, {"beta": 8.0, "name": "a | b"})
    assert get("b", "base2new", "y", 0)[0]["iterations"] == 7
    assert "a \\| b" in recipe_table_markdown(directory=tmp_path)


@pytest.mark.parametrize("text, message", [
    (VALID.replace("rules:", "rulez:"), "top level: unknown key 'rulez'"),
    (VALID.replace("    source: a config", "    source: a config\n    sauce: x"), r"rules\[0\]: unknown key 'sauce'"),
    (VALID.replace("when: {shots: 0}", "when: {shot: 0}"), r"rules\[2\].when: unknown key 'shot'"),
    (VALID.replace("optim: {epochs: 20}", "optim: {epoch: 20}"), r"rules\[0\].optim: unknown optim field 'epoch'"),
    (VALID.replace("lr: 1,", "lr: 1e-4,"), r"defaults.optim.lr: must be a number, got the string '1e-4'"),
    (VALID.replace("epochs: 20", "epochs: 2.5"), r"rules\[0\].optim.epochs: must be a whole number"),
    (VALID.replace("optim: {epochs: 20}", "optim: {optimizer: adam}"), r"rules\[0\].optim.optimizer: must be one of"),
    (VALID.replace("{per_shot: 5}", "{per_shots: 5}"), r"defaults.optim.iterations: unknown key 'per_shots'"),
    (VALID.replace("    source: a choice\n", ""), r"rules\[2\]: key 'source' is required"),
    (VALID.replace("method: b,", "method: c,"), r"rules\[1\].when.method: c is not among the file's methods"),
    (VALID.replace("{min: 2, max: 4}", "{min: 4, max: 2}"), r"rules\[0\].when.shots: min 4 is above max 2"),
    (VALID.replace("options: {beta: 2.0}", "options: {beta: [2.0]}"), r"defaults.options.beta: must be a string"),
    (VALID.replace("  optim: {epochs: 10, lr: 1,", "  optim: {epochs: 10, epochs: 11, lr: 1,"), "given twice"),
    (VALID.replace("when: {shots: 0}", "when: {}"), "a rule for every run belongs in defaults"),
    ("- methods: [a]\n", "top level: must be a mapping, got list"),
    ("", "top level: must be a mapping, got NoneType"),
    ("methods: [a\n", "not valid YAML"),
])
def test_reader_refuses_malformed_files(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ClipFitError, match=message) as err:
        load_recipe(path)
    assert str(path) in str(err.value)


def test_two_files_may_not_serve_one_method(tmp_path):
    write(tmp_path, VALID, "one.yaml")
    write(tmp_path, VALID.replace("methods: [a, b]", "methods: [b]").replace("method: b, ", ""), "two.yaml")
    with pytest.raises(ClipFitError, match="one.yaml and .*two.yaml both name method 'b'"):
        recipe_files(tmp_path)


# The study's table (methods-adapters.md, from Andy-LZH/peft4clip@8c00629 configs/<strategy>/<task>.yaml), read
# by hand: N / lr / weight decay / TOTAL_EPOCH for VPT, lr / weight decay / TOTAL_EPOCH for CLIP-Adapter; every
# run adds the 5 "warm-up" epochs at the same constant lr.
@pytest.mark.parametrize(("method", "task", "expected"), [
    ("vpt-shallow", "vtab-dtd", (10, 1.0, 1e-4, 5)),
    ("vpt-deep", "vtab-svhn", (50, 1.0, 1e-4, 40)),
    ("vpt-shallow", "vtab-clevr_dist", (200, 50.0, 0.0, 15)),
    ("vpt-deep", "vtab-dsprites_loc", (50, 1e-3, 1e-4, 15)),
    ("clip-adapter", "vtab-dmlab", (None, 1e-2, 1e-4, 15)),
    ("clip-adapter", "vtab-oxford_flowers102", (None, 1e-3, 1e-5, 2)),
])
def test_the_studys_vtab_recipes(method, task, expected):
    tokens, lr, wd, total = expected
    optim, options = recipe_defaults(method, "vtab", task, 16)
    assert (optim["lr"], optim["weight_decay"], optim["epochs"], optim["schedule"]) == (lr, wd, total + 5, "constant")
    if tokens is None:
        assert optim["optimizer"] == "adamw" and options["ratio"] == 0.5
    else:
        assert optim["optimizer"] == "sgd" and options["num_tokens"] == tokens


@pytest.mark.parametrize("protocol", ["cross-dataset", "distribution-shift"])
def test_kgcoops_transfer_recipe_is_its_config_as_shipped(protocol):
    optim, options = recipe_defaults("kgcoop", protocol, "imagenet", 16)
    assert (optim["batch_size"], optim["epochs"], optim["lr"]) == (128, 100, 0.002) and options == {}
