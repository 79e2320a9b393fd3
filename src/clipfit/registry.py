"""One registry class for everything registered by name: methods, datasets, protocols, built-in weights.

A registry is a read-only mapping from name to entry. Registering a name twice with another entry is
refused (`ValueError`: a plugin must not silently replace a method or a dataset). The listing order is
explicit: the names given as ``order`` first, in that order, then every other name alphabetically, never
the order in which modules happened to be imported. Looking a name up, listing or counting first loads
the installed plugins (`clipfit.plugins`), so that what a plugin registers is there whoever asks first.

An alias is another name for a registered entry (a paper's own spelling of a dataset, typos included):
looking it up (`lookup`, ``registry[alias]``, ``alias in registry``, `get`) finds the entry it stands
for, `resolve` turns it into the entry's name, and `aliases` lists them; iterating, `names` and ``len``
count each entry once, under its own name.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, Sequence
from typing import Generic, TypeVar

from .errors import ClipFitError

T = TypeVar("T")


class Registry(Mapping, Generic[T]):
    """Entries of one kind by name (see the module doc).

    ``kind`` names the entries in messages ("method", "dataset"); ``error`` is the `ClipFitError` subclass
    `lookup` raises for an unknown name; ``order`` the names listed first.
    """

    def __init__(self, kind: str, *, order: Sequence[str] = (), error: type[ClipFitError] = ClipFitError):
        self.kind, self.order, self.error = kind, tuple(order), error
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name``; the same entry again is a no-op, another one `ValueError`, and so is
        a name already taken by an alias."""
        if name in self._aliases:
            raise ValueError(f"{self.kind} {name!r} is already an alias of {self._aliases[name]!r}")
        existing = self._entries.get(name)
        if existing is not None and existing is not entry and existing != entry:
            where = getattr(existing, "__module__", None)
            raise ValueError(f"{self.kind} {name!r} is already registered" + (f" (by {where})" if where else ""))
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> T:
        """Remove and return the entry ``name`` with its aliases (a test's or a notebook's own registration);
        for an alias, remove the alias only and return its entry. `KeyError` if absent."""
        if name in self._aliases:
            return self._entries[self._aliases.pop(name)]
        entry = self._entries.pop(name)
        self._aliases = {alias: target for alias, target in self._aliases.items() if target != name}
        return entry

    def register_alias(self, alias: str, name: str) -> None:
        """Let ``alias`` stand for the registered entry ``name``. The same alias again is a no-op; `ValueError`
        when ``name`` is not registered (an alias of an alias included), ``alias`` is an entry's name, or it
        already stands for another entry."""
        if name not in self._entries:
            raise ValueError(f"alias {alias!r}: {self.kind} {name!r} is not registered")
        if alias in self._entries:
            raise ValueError(f"alias {alias!r}: {self.kind} {alias!r} is registered under that name")
        if self._aliases.get(alias, name) != name:
            raise ValueError(f"alias {alias!r} already stands for {self.kind} {self._aliases[alias]!r}")
        self._aliases[alias] = name

    def extend_order(self, names: Sequence[str]) -> None:
        """List ``names`` after the names already ordered (a module registering a family of entries that
        belong together, in their papers' order); names already ordered keep their place."""
        self.order += tuple(name for name in names if name not in self.order)

    def resolve(self, name: str) -> str:
        """The entry's own name for an alias; any other name unchanged (known or not)."""
        self._loaded()
        return self._aliases.get(name, name)

    def aliases(self) -> dict[str, str]:
        """Every alias and the name it stands for, in the listing order of those names (then alphabetical)."""
        self._loaded()
        rank = {name: i for i, name in enumerate(self.names())}
        return dict(sorted(self._aliases.items(), key=lambda item: (rank.get(item[1], len(rank)), item[0])))

    def _loaded(self) -> dict[str, T]:
        from .plugins import load_plugins

        load_plugins()
        return self._entries

    def names(self) -> list[str]:
        """Every registered name in listing order (``order`` first, then alphabetical)."""
        entries = self._loaded()
        first = [name for name in self.order if name in entries]
        return first + sorted(set(entries) - set(first))

    def lookup(self, name: str) -> T:
        """The entry named ``name``, or the one the alias ``name`` stands for; ``error`` naming the close
        matches (names and aliases) and the known names otherwise."""
        entries = self._loaded()
        name = self._aliases.get(name, name)
        if name not in entries:
            close = difflib.get_close_matches(name, [*entries, *self._aliases], n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise self.error(f"unknown {self.kind} {name!r}{hint}; known: {', '.join(self.names())}")
        return entries[name]

    def __getitem__(self, name: str) -> T:
        entries = self._loaded()
        return entries[self._aliases.get(name, name)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._loaded())

    def __contains__(self, name: object) -> bool:
        entries = self._loaded()
        return (self._aliases.get(name, name) if isinstance(name, str) else name) in entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
