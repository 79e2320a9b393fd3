"""Each method's recipe (optimiser, schedule and method options per protocol, dataset and shots) as data.

One YAML file per method family sits beside this module. `recipe_defaults(method, protocol, dataset, shots)`
gives the `OptimConfig` fields and the method options its paper and official code use for that run; the
runner fills them in where the user gave none (the rest of `OptimConfig` falls back to Dassl's defaults).

This module stays at the bottom layer: it imports the standard library, PyYAML and `clipfit.errors` only (no
torch, no other clipfit module), so that `clipfit --help`, the README generator and the tests read the
recipes without building anything. Option names are therefore not checked against the methods' configs
here; the tests check them (and dataset and protocol names) against the registries.

File format (every key below is the only one allowed at its place; anything else is a `ClipFitError`
naming the file and the key)::

    # CoOp: why these numbers (comments are free)
    methods: [coop, coop+ln]          # the registered methods this file serves (each in exactly one file)
    defaults:                         # what every run of these methods gets ...
      optim: {epochs: 200, batch_size: 32, lr: 0.002}
      options: {}
      source: "Zhou et al., IJCV 2022; KaiyangZhou/CoOp@ff61507 configs/trainers/CoOp/vit_b16.yaml"
    rules:                            # ... unless a rule matches: matching rules apply in order, later ones win
      - when: {protocol: few-shot, shots: {min: 1, max: 1}}
        optim: {epochs: 50}
        source: "KaiyangZhou/CoOp@ff61507 COOP.md, scripts/coop/main.sh (1 shot: vit_b16_ep50.yaml)"
      - when: {dataset: imagenet}
        optim: {epochs: 50}
        source: "..."

- ``when`` (every condition given must hold): ``method``, ``protocol``, ``dataset``: a name or a list of
  names (exact, case-sensitive registry names); ``shots``: a whole number, a list of them, or an inclusive
  range ``{min: 2, max: 4}`` (either bound may be left out). ``method`` lets a variant differ from the other
  methods of its file; it must name one of the file's ``methods``.
- ``optim``: `OptimConfig` fields only (`OPTIM_FIELDS`). Whole-number fields take a whole number or
  ``{per_shot: N}``, meaning N x shots (CLIP-LoRA's budget of 500 iterations per shot); number fields take a
  number (read as a float: write ``1.0e-4`` or ``0.0001``, since PyYAML reads ``1e-4`` as a string);
  ``optimizer`` and ``schedule`` one of `OPTIMIZERS` / `SCHEDULES`.
- ``options``: method options (scalars: string, number, true/false, null), merged key by key like ``optim``.
- ``source``: required, in ``defaults`` and in every rule: the paper (and table or section) or the official
  repository at a commit and the config or script file the numbers come from, or why there are none.

A key written twice in one mapping is an error too (PyYAML would silently keep the last one).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import ClipFitError

RECIPE_DIR = Path(__file__).resolve().parent

# `OptimConfig`'s fields and the type of each value (the tests check that they agree; this module stays
# below the config and the engine, which import more than the standard library).
OPTIM_FIELDS: dict[str, type] = {
    "epochs": int, "batch_size": int, "lr": float, "momentum": float, "weight_decay": float, "warmup_epochs": int,
    "warmup_lr": float, "optimizer": str, "schedule": str, "iterations": int, "min_lr": float, "eps": float,
}
# The choices of `OptimConfig.optimizer` and `.schedule` (checked against the config's by the tests).
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine-epochs", "cosine-iterations", "constant")

FILE_KEYS = ("methods", "defaults", "rules")
DEFAULTS_KEYS = ("optim", "options", "source")
RULE_KEYS = ("when", "optim", "options", "source")
WHEN_KEYS = ("method", "protocol", "dataset", "shots")
RANGE_KEYS = ("min", "max")
PER_SHOT = "per_shot"


@dataclass(frozen=True)
class PerShot:
    """A whole-number optim value proportional to the shots: ``per_shot`` x shots."""

    per_shot: int

    def value(self, shots: int) -> int:
        return self.per_shot * shots


@dataclass(frozen=True)
class ShotRange:
    """An inclusive range of shots; a bound of None is open."""

    min: int | None = None
    max: int | None = None

    def __contains__(self, shots: int) -> bool:
        return (self.min is None or shots >= self.min) and (self.max is None or shots <= self.max)


@dataclass(frozen=True)
class Rule:
    """One entry of a recipe: where it applies (``when``: key -> tuple of names, tuple of shots or a
    `ShotRange`; empty for the defaults), what it sets, and where the numbers come from."""

    when: dict
    optim: dict
    options: dict
    source: str

    def matches(self, method: str, protocol: str, dataset: str, shots: int) -> bool:
        given = {"method": method, "protocol": protocol, "dataset": dataset, "shots": shots}
        return all(given[key] in allowed for key, allowed in self.when.items())


@dataclass(frozen=True)
class Recipe:
    """A parsed, validated recipe file."""

    path: Path
    methods: tuple[str, ...]
    defaults: Rule
    rules: tuple[Rule, ...]

    def resolve(self, method: str, protocol: str, dataset: str, shots: int) -> tuple[dict, dict]:
        """(optim fields, method options) for one run: the defaults, then each matching rule over them."""
        optim, options = {}, {}
        for rule in (self.defaults, *self.rules):  # the defaults' empty ``when`` matches every run
            if rule.matches(method, protocol, dataset, shots):
                optim.update(rule.optim)
                options.update(rule.options)
        return {k: v.value(shots) if isinstance(v, PerShot) else v for k, v in optim.items()}, dict(options)


# --------------------------------------------------------------------------------------------------------
# Reading and validation


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key written twice in one mapping (safe_load keeps the last silently,
    which would hide a mistyped rule)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _fail(path: Path, where: str, message: str) -> ClipFitError:
    return ClipFitError(f"recipe file {path}: {where}: {message}")


def _mapping(path: Path, where: str, value, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
    if not isinstance(value, dict):
        raise _fail(path, where, f"must be a mapping, got {type(value).__name__}")
    for key in value:
        if key not in allowed:
            raise _fail(path, where, f"unknown key {key!r} (allowed: {', '.join(allowed)})")
    for key in required:
        if key not in value:
            raise _fail(path, where, f"key {key!r} is required")
    return value


def _names(path: Path, where: str, value) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise _fail(path, where, f"must be a name or a non-empty list of names, got {value!r}")
    if len(set(names)) != len(names):
        raise _fail(path, where, f"names a value twice: {value!r}")
    return tuple(names)


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shots(path: Path, where: str, value) -> tuple[int, ...] | ShotRange:
    if isinstance(value, dict):
        _mapping(path, where, value, RANGE_KEYS)
        if not value or not all(_whole(v) and v >= 0 for v in value.values()):
            raise _fail(path, where, f"a range takes min and/or max, whole numbers >= 0; got {value!r}")
        if len(value) == 2 and value["min"] > value["max"]:
            raise _fail(path, where, f"min {value['min']} is above max {value['max']}")
        return ShotRange(value.get("min"), value.get("max"))
    shots = [value] if _whole(value) else value
    if not isinstance(shots, list) or not shots or not all(_whole(s) and s >= 0 for s in shots):
        raise _fail(path, where, f"must be a whole number >= 0, a list of them or {{min: .., max: ..}}; got {value!r}")
    return tuple(shots)


def _when(path: Path, where: str, value, methods: tuple[str, ...]) -> dict:
    _mapping(path, where, value, WHEN_KEYS)
    if not value:
        raise _fail(path, where, "is empty: a rule for every run belongs in defaults")
    when = {}
    for key, condition in value.items():
        if key == "shots":
            when[key] = _shots(path, f"{where}.shots", condition)
            continue
        when[key] = _names(path, f"{where}.{key}", condition)
        if key == "method":
            stray = [m for m in when[key] if m not in methods]
            if stray:
                raise _fail(path, f"{where}.method", f"{', '.join(stray)} is not among the file's methods "
                                                     f"({', '.join(methods)})")
    return when


def _optim_value(path: Path, where: str, name: str, value):
    kind = OPTIM_FIELDS[name]
    if kind is int:
        if isinstance(value, dict):
            _mapping(path, where, value, (PER_SHOT,), (PER_SHOT,))
            if not (_whole(value[PER_SHOT]) and value[PER_SHOT] >= 1):
                raise _fail(path, f"{where}.{PER_SHOT}", f"must be a whole number >= 1, got {value[PER_SHOT]!r}")
            return PerShot(value[PER_SHOT])
        if not (_whole(value) and value >= 0):
            raise _fail(path, where, f"must be a whole number >= 0 or {{{PER_SHOT}: N}}, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads 1e-4, without a dot, as a string
            raise _fail(path, where, f"must be a number, got the string {value!r} (write 1.0e-4, not 1e-4)")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise _fail(path, where, f"must be a finite number >= 0, got {value!r}")
        return float(value)  # OptimConfig's float fields: an integer written in the file still reads as one
    choices = OPTIMIZERS if name == "optimizer" else SCHEDULES
    if value not in choices:
        raise _fail(path, where, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def _optim(path: Path, where: str, value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(path, where, f"must be a mapping of OptimConfig fields, got {type(value).__name__}")
    for name in value:
        if name not in OPTIM_FIELDS:
            raise _fail(path, where, f"unknown optim field {name!r} (OptimConfig fields: {', '.join(OPTIM_FIELDS)})")
    return {name: _optim_value(path, f"{where}.{name}", name, v) for name, v in value.items()}


def _options(path: Path, where: str, value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(path, where, f"must be a mapping of method options, got {type(value).__name__}")
    for name, v in value.items():
        if not isinstance(name, str) or not name:
            raise _fail(path, where, f"option names are strings, got {name!r}")
        if v is not None and not isinstance(v, (str, int, float, bool)):
            raise _fail(path, f"{where}.{name}", f"must be a string, number, true/false or null, got {v!r}")
        if isinstance(v, float) and not math.isfinite(v):
            raise _fail(path, f"{where}.{name}", f"must be finite, got {v!r}")
    return dict(value)


def _source(path: Path, where: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, f"{where}.source", "must say where the numbers come from (a paper table, or a "
                                             "repository@commit and its config file)")
    return " ".join(value.split())


def _rule(path: Path, where: str, value, methods: tuple[str, ...], defaults: bool = False) -> Rule:
    keys = DEFAULTS_KEYS if defaults else RULE_KEYS
    _mapping(path, where, value, keys, ("source",) if defaults else ("when", "source"))
    when = {} if defaults else _when(path, f"{where}.when", value["when"], methods)
    return Rule(when, _optim(path, f"{where}.optim", value.get("optim")),
                _options(path, f"{where}.options", value.get("options")), _source(path, where, value.get("source")))


@functools.lru_cache(maxsize=128)  # bounded: an edited file adds an entry (keyed by its mtime)
def _load(path: Path, mtime_ns: int) -> Recipe:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)  # a SafeLoader
    except FileNotFoundError:
        raise ClipFitError(f"recipe file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ClipFitError(f"recipe file {path}: not valid YAML ({err})") from None
    _mapping(path, "top level", data, FILE_KEYS, ("methods", "defaults"))
    methods = _names(path, "methods", data["methods"])
    rules = data.get("rules") or []
    if not isinstance(rules, list):
        raise _fail(path, "rules", f"must be a list of rules, got {type(rules).__name__}")
    return Recipe(path, methods, _rule(path, "defaults", data["defaults"], methods, defaults=True),
                  tuple(_rule(path, f"rules[{i}]", rule, methods) for i, rule in enumerate(rules)))


def load_recipe(path: str | Path) -> Recipe:
    """Parse and validate one recipe file (cached per file and modification time); `ClipFitError` naming the
    file and the key at fault."""
    path = Path(path).resolve()
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        raise ClipFitError(f"recipe file not found: {path}") from None
    return _load(path, mtime)


@functools.lru_cache(maxsize=16)
def _files(directory: Path) -> dict[str, Path]:
    served: dict[str, Path] = {}
    for path in sorted(directory.glob("*.yaml")):
        for method in load_recipe(path).methods:
            if method in served:
                raise ClipFitError(f"recipe files {served[method]} and {path} both name method {method!r}")
            served[method] = path
    return served


def recipe_files(directory: str | Path | None = None) -> dict[str, Path]:
    """Method name -> the recipe file that serves it, for every ``*.yaml`` of ``directory`` (the package's
    recipes by default); `ClipFitError` when two files name the same method or a file is invalid."""
    return dict(_files(Path(directory or RECIPE_DIR).resolve()))


def recipe_for(method: str, directory: str | Path | None = None) -> Recipe:
    """The parsed recipe serving ``method``; `ClipFitError` when no file names it."""
    files = recipe_files(directory)
    if method not in files:
        raise ClipFitError(f"no recipe file names method {method!r} (recipes: {', '.join(sorted(files))})")
    return load_recipe(files[method])


def recipe_defaults(method: str, protocol: str, dataset: str, shots: int,
                    directory: str | Path | None = None) -> tuple[dict, dict]:
    """(`OptimConfig` fields, method options) that ``method``'s paper and official code set for a run of
    ``protocol`` on ``dataset`` (its registry name, or a generic format's: "imagefolder", "csv") with
    ``shots`` per class (0: every training image). Fresh dicts: the caller may change them."""
    return recipe_for(method, directory).resolve(method, protocol, dataset, shots)


# --------------------------------------------------------------------------------------------------------
# The README's table


def _format_value(value) -> str:
    if isinstance(value, PerShot):
        return f"{value.per_shot} × shots"
    if isinstance(value, bool) or value is None:
        return "true" if value is True else "false" if value is False else "null"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def _format_fields(fields: dict) -> str:
    return ", ".join(f"{k} {_format_value(v)}" for k, v in fields.items()) or "—"


def _format_condition(when: dict, key: str) -> str:
    condition = when.get(key)
    if condition is None:
        return "any"
    if isinstance(condition, ShotRange):
        if condition.min == condition.max:
            return str(condition.min)
        if condition.max is None:
            return f"≥ {condition.min}"
        return f"≤ {condition.max}" if condition.min is None else f"{condition.min}–{condition.max}"
    return ", ".join(str(c) for c in condition)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def recipe_table_markdown(methods: Iterable[str] | None = None, directory: str | Path | None = None) -> str:
    """A Markdown table of the recipes: one row for each file's defaults, then one per rule, in the order they
    apply (a later row overrides an earlier one where both match). ``methods``: which methods' files, in
    that order (default: every file, by file name). Deterministic: the same files give the same text."""
    files = recipe_files(directory)
    if methods is None:
        paths = sorted(set(files.values()))
    else:
        paths = []
        for method in methods:
            if method not in files:
                raise ClipFitError(f"no recipe file names method {method!r}")
            if files[method] not in paths:
                paths.append(files[method])
    lines = ["| Methods | Protocol | Dataset | Shots | Optimisation | Options | Source |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for path in paths:
        recipe = load_recipe(path)
        for rule in (recipe.defaults, *recipe.rules):
            served = rule.when.get("method", recipe.methods)
            cells = [", ".join(f"`{m}`" for m in served)]
            cells += [_format_condition(rule.when, key) for key in ("protocol", "dataset", "shots")]
            if rule is recipe.defaults:
                cells[1] = "any (defaults)"
            cells += [_format_fields(rule.optim), _format_fields(rule.options), rule.source]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["OPTIMIZERS", "OPTIM_FIELDS", "RECIPE_DIR", "SCHEDULES", "Recipe", "Rule", "load_recipe", "recipe_defaults",
           "recipe_files", "recipe_for", "recipe_table_markdown"]
