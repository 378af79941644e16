"""The strategy registry and factory."""

from __future__ import annotations

from typing import Any

from wpl_nas.registry import Registry
from wpl_nas.strategies.base import Strategy
from wpl_nas.supernet import Supernet

__all__ = ["STRATEGIES", "create_strategy"]

STRATEGIES: Registry[type[Strategy]] = Registry("strategy")


def create_strategy(name: str, supernet: Supernet, options: Any = None) -> Strategy:
    """Build strategy ``name`` for ``supernet``.

    Args:
        name: A registered name (``wpl``, ``naive``).
        supernet: The supernet to protect.
        options: The strategy's options dataclass; its defaults if None.

    Raises:
        ConfigError: unknown name (the message lists the registered strategies).
    """
    cls = STRATEGIES.get(name)
    if options is None and cls.Options is not None:
        options = cls.Options()
    return cls(supernet, options)
