"""A small name → object registry with helpful lookups.

Model families, data sources, activations and optimizers are each kept in a :class:`Registry`, so a
study file can only name registered things (never an import path) and adding one is one decorator.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def did_you_mean(name: str, candidates: list[str] | tuple[str, ...]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest candidate, or ``""`` if none is close."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def import_submodules(package: str, path: Iterable[str]) -> list[str]:
    """Import every module of ``package`` (its ``__path__`` is ``path``) but the private ones.

    A package whose modules register themselves (``@FAMILIES.register("mlp")``) calls this from its
    ``__init__``, so a new module in the folder is found without editing an import line. Names
    starting with ``_`` are skipped. Returns the names imported, sorted (the order they ran in).
    """
    names = sorted(
        info.name for info in pkgutil.iter_modules(path) if not info.name.startswith("_")
    )
    for name in names:
        importlib.import_module(f"{package}.{name}")
    return names


class Registry(Generic[T]):
    """Named objects of one kind (e.g. ``"model family"``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated object under ``name``."""

        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        """Register ``obj`` under ``name``; a name may be registered only once."""
        if name in self._items:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._items[name] = obj

    def get(self, name: str) -> T:
        """Look ``name`` up; raise :class:`KeyError` with the known names and a suggestion."""
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(self.unknown_message(name)) from None

    def unknown_message(self, name: object) -> str:
        """The message for an unknown name: the known ones and the closest match."""
        known = ", ".join(self.names())
        hint = did_you_mean(str(name), self.names())
        return f"unknown {self.kind} '{name}'{hint}; known: {known}"

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
