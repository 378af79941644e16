"""Name -> component registries with helpful unknown-name errors.

Every pluggable family (operations, strategies, datasets, samplers) is a :class:`Registry`.
Components register with a decorator and are created by name::

    STRATEGIES = Registry("strategy")

    @STRATEGIES.register("naive")
    class NaiveStrategy(Strategy): ...

    STRATEGIES.get("naive")       # -> NaiveStrategy
    STRATEGIES.get("nieve")       # ConfigError: unknown strategy 'nieve' (did you mean 'naive'?); valid choices: ...
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from wpl_nas.errors import ConfigError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """An ordered mapping from names to components of one kind.

    Args:
        kind: What the registry holds, used in error messages ("strategy", "dataset", ...).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Return a decorator that registers its argument under ``name``."""

        def decorator(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return decorator

    def add(self, name: str, item: T) -> None:
        """Register ``item`` under ``name`` (the non-decorator form)."""
        self.register(name)(item)

    def get(self, name: str) -> T:
        """Return the component called ``name``.

        Raises:
            ConfigError: ``name`` is not registered; the message lists the valid names.
        """
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        """The error text for an unknown ``name``: a close match if any, and all choices."""
        message = f"unknown {self.kind} {name!r}"
        close = difflib.get_close_matches(str(name), self._items, n=1)
        if close:
            message += f" (did you mean {close[0]!r}?)"
        return f"{message}; valid choices: {', '.join(self._items)}"

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
