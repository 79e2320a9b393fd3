"""The library's layers import only downward (an `ast` walk over src/), and the light ones stay light.

Bottom to top (a module may import its own layer and those below it, never one above):

    0 foundations   clipfit (the package), errors, defaults, files, registry, plugins
    1 config        config, recipes, readme, templates, published (the published tables, as data)
    2 backbones     backbone, hf_checkpoint, text_encoding, precision, adapter; and data (clipfit.data.*)
    3 methods       methods (clipfit.methods.*), protocols
    4 training      engine, features
    5 runs          runner, store (the run folders), export, report, tables (tables of run folders)
    6 api           api, study (the PEFT-for-CLIP study's command line)
    7 cli           cli

`clipfit_world` (the mini world) sits above all of them as a plugin: `clipfit` never imports it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS = {
    "clipfit": 0, "clipfit.errors": 0, "clipfit.defaults": 0, "clipfit.files": 0, "clipfit.registry": 0,
    "clipfit.plugins": 0,
    "clipfit.config": 1, "clipfit.recipes": 1, "clipfit.readme": 1, "clipfit.templates": 1,
    "clipfit.published": 1,
    "clipfit.backbone": 2, "clipfit.text_encoding": 2, "clipfit.precision": 2, "clipfit.adapter": 2, "clipfit.data": 2,
    "clipfit.hf_checkpoint": 2,
    "clipfit.methods": 3, "clipfit.protocols": 3,
    "clipfit.engine": 4, "clipfit.features": 4,
    "clipfit.runner": 5, "clipfit.store": 5, "clipfit.export": 5, "clipfit.report": 5,
    "clipfit.tables": 5,
    "clipfit.api": 6, "clipfit.study": 6,
    "clipfit.cli": 7,
    "clipfit_world": 8,
}


def layer_of(module: str) -> int | None:
    """The layer of a module: that of the longest prefix named in LAYERS (`clipfit.data.readers` is data's);
    None for a module outside the project (torch, the standard library)."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if name in LAYERS:
            return LAYERS[name]
    return None


def module_name(path: Path, src: Path) -> str:
    relative = path.relative_to(src).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def imported_modules(path: Path, src: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, function-level ones included, relative ones resolved.
    ``from package import name`` counts as importing ``package.name`` (a submodule, or a name in it)."""
    own = module_name(path, src)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


def upward_imports(src: Path) -> list[str]:
    """Every import under ``src`` that points to a higher layer, as `file:line: a (layer) imports b (layer)`."""
    problems = []
    for path in sorted(src.rglob("*.py")):
        own = module_name(path, src)
        mine = layer_of(own)
        if mine is None:
            continue
        for line, target in imported_modules(path, src):
            theirs = layer_of(target)
            if theirs is not None and theirs > mine:
                problems.append(
                    f"{path.relative_to(src)}:{line}: {own} (layer {mine}) imports {target} (layer {theirs})"
                )
    return problems


def test_every_import_points_down_a_layer():
    assert upward_imports(SRC) == []


def test_every_module_of_the_library_has_a_layer():
    unplaced = [module_name(p, SRC) for p in SRC.rglob("*.py") if layer_of(module_name(p, SRC)) is None]
    assert unplaced == []


def test_the_checker_finds_an_upward_import(tmp_path):
    """The test of the test: a config that imports the engine, a method that imports the mini world, and
    a relative import of the runner from inside the data package are each reported."""
    package = tmp_path / "clipfit"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "config.py").write_text(
        "import json\nfrom .errors import ClipFitError\n\ndef f():\n    from .engine import train\n"
    )
    (package / "methods.py").write_text("from clipfit.backbone import Backbone\nimport clipfit_world.tasks\n")
    (package / "data" / "__init__.py").write_text("from ..runner import run\nfrom . import readers\n")
    problems = upward_imports(tmp_path)
    assert problems == [
        "clipfit/config.py:5: clipfit.config (layer 1) imports clipfit.engine.train (layer 4)",
        "clipfit/data/__init__.py:1: clipfit.data (layer 2) imports clipfit.runner.run (layer 5)",
        "clipfit/methods.py:2: clipfit.methods (layer 3) imports clipfit_world.tasks (layer 8)",
    ]


def _loaded_by(statement: str) -> set[str]:
    """The top-level names of every module a fresh interpreter has loaded after ``statement``."""
    code = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.parametrize("module", ["clipfit.config", "clipfit.registry", "clipfit.recipes", "clipfit.plugins",
                                    "clipfit.templates", "clipfit.published"])
def test_the_config_layer_loads_no_torch_open_clip_or_matplotlib(module):
    loaded = {name.split(".")[0] for name in _loaded_by(f"import {module}")}
    assert loaded.isdisjoint({"torch", "open_clip", "matplotlib", "numpy", "clipfit_world"})


def test_the_methods_load_no_matplotlib_and_nothing_of_the_mini_world():
    loaded = _loaded_by("import clipfit.methods")
    assert not {name for name in loaded if name.split(".")[0] in ("matplotlib", "clipfit_world")}
    assert not {name for name in loaded if name.startswith(("clipfit.engine", "clipfit.runner", "clipfit.api"))}


def test_the_mini_world_is_found_through_its_entry_point_not_imported_by_clipfit():
    """`clipfit_world` registers its tasks and weights when a registry is first read, not at import."""
    assert "clipfit_world" not in _loaded_by("import clipfit.api, clipfit.cli")
    loaded = _loaded_by("from clipfit import data; assert 'mini_digits' in data.DATASETS")
    assert "clipfit_world.plugin" in loaded
