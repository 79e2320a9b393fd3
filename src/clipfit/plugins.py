"""Plugins: packages that register datasets, built-in weights, methods or commands of their own.

A plugin is an installed distribution with an entry point in the group ``clipfit.plugins`` whose value
is a function taking no arguments; calling it registers what the plugin brings, through the public
registration functions (`clipfit.data.register_dataset`, `clipfit.backbone.register_builtin_weights`,
`clipfit.methods.register_method`, `register_command` below). The mini world is one
(`clipfit_world.plugin:register`, declared in this distribution's pyproject.toml); so is a user's own
dataset family::

    [project.entry-points."clipfit.plugins"]
    my_datasets = "my_package.clipfit_plugin:register"

Plugins are loaded once, the first time a registry is read (`clipfit.registry.Registry`), never at
import time, so that `clipfit` itself imports no plugin and a broken plugin cannot break `import clipfit`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

from .errors import ClipFitError

GROUP = "clipfit.plugins"

_state = {"loaded": False}


@dataclass(frozen=True)
class Command:
    """A `clipfit` subcommand a plugin adds: ``add_arguments(parser)`` declares its flags, ``run(args)``
    runs it (raising `ClipFitError` for the one-line errors the CLI prints). ``parent`` "table" makes it
    `clipfit table NAME`, a table the README quotes; None a command of its own."""

    name: str
    help: str
    add_arguments: Callable
    run: Callable
    parent: str | None = None


COMMANDS: dict[str, Command] = {}


def register_command(command: Command) -> Command:
    """Add a subcommand; a name taken by another command raises `ValueError`."""
    key = f"{command.parent} {command.name}" if command.parent else command.name
    if COMMANDS.get(key, command) != command:
        raise ValueError(f"command {key!r} is already registered")
    COMMANDS[key] = command
    return command


def load_plugins() -> None:
    """Call every ``clipfit.plugins`` entry point once per process, in the entry points' name order.
    `ClipFitError` naming the plugin when one fails to load."""
    if _state["loaded"]:
        return
    _state["loaded"] = True  # first, so that a plugin reading a registry while it registers does not recurse
    for point in sorted(entry_points(group=GROUP), key=lambda p: p.name):
        try:
            point.load()()
        except ClipFitError:
            raise
        except Exception as err:
            raise ClipFitError(
                f"plugin {point.name!r} ({point.value}) failed to load: {type(err).__name__}: {err}"
            ) from err
