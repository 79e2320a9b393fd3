"""One registry class for everything registered by name: methods, datasets, protocols, built-in weights.

A registry is a read-only mapping from name to entry. Registering a name twice with another entry is
refused (`ValueError`: a plugin must not silently replace a method or a dataset). The listing order is
explicit: the names given as ``order`` first, in that order, then every other name alphabetically, never
the order in which modules happened to be imported. Looking a name up, listing or counting first loads
the installed plugins (`clipfit.plugins`), so that what a plugin registers is there whoever asks first.
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

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name``; the same entry again is a no-op, another one `ValueError`."""
        existing = self._entries.get(name)
        if existing is not None and existing is not entry and existing != entry:
            where = getattr(existing, "__module__", None)
            raise ValueError(f"{self.kind} {name!r} is already registered" + (f" (by {where})" if where else ""))
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> T:
        """Remove and return the entry ``name`` (a test's or a notebook's own registration); `KeyError` if absent."""
        return self._entries.pop(name)

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
        """The entry named ``name``; ``error`` naming the close matches and the known names otherwise."""
        entries = self._loaded()
        if name not in entries:
            close = difflib.get_close_matches(name, list(entries), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise self.error(f"unknown {self.kind} {name!r}{hint}; known: {', '.join(self.names())}")
        return entries[name]

    def __getitem__(self, name: str) -> T:
        return self._loaded()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._loaded())

    def __contains__(self, name: object) -> bool:
        return name in self._loaded()

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
