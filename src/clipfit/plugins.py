"""Plugins: packages that register datasets, built-in weights, methods or commands of their own.

A plugin is an installed distribution with an entry point whose value is a function taking no
arguments; calling it registers what the plugin brings, through the public registration functions. Two
groups, so that `clipfit --help` never waits for torch:

- ``clipfit.plugins``: datasets, weights, methods (`clipfit.data.register_dataset`,
  `clipfit.backbone.register_builtin_weights`, `clipfit.methods.register_method`); loaded once, the
  first time a registry is read (`clipfit.registry.Registry`);
- ``clipfit.commands``: `clipfit` subcommands (`register_command` below); loaded when the CLI builds its
  parser, so such a function imports nothing heavy (its commands import what they run when they run).

The mini world is one such plugin (`clipfit_world.plugin:register` and `clipfit_world.commands:register`,
declared in this distribution's pyproject.toml); so is a user's own dataset family::

    [project.entry-points."clipfit.plugins"]
    my_datasets = "my_package.clipfit_plugin:register"

Nothing is loaded at import time: `clipfit` itself imports no plugin, and a broken plugin cannot break
`import clipfit`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

from .errors import ClipFitError

GROUP = "clipfit.plugins"
COMMANDS_GROUP = "clipfit.commands"

_loaded: set[str] = set()


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


def load_plugins(group: str = GROUP) -> None:
    """Call every entry point of ``group`` once per process, in the entry points' name order.
    `ClipFitError` naming the plugin when one fails to load."""
    if group in _loaded:
        return
    _loaded.add(group)  # first, so that a plugin reading a registry while it registers does not recurse
    for point in sorted(entry_points(group=group), key=lambda p: p.name):
        try:
            point.load()()
        except ClipFitError:
            raise
        except Exception as err:
            raise ClipFitError(
                f"plugin {point.name!r} ({point.value}) failed to load: {type(err).__name__}: {err}"
            ) from err


def load_commands() -> None:
    """Load the ``clipfit.commands`` entry points (the CLI's parser, before any command runs)."""
    load_plugins(COMMANDS_GROUP)
