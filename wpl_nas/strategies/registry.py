"""The strategy registry, the factory, and composition of two strategies (``hat+distill``)."""

from __future__ import annotations

from typing import Any

from wpl_nas.errors import ConfigError
from wpl_nas.registry import Registry
from wpl_nas.strategies.base import Strategy
from wpl_nas.supernet import Supernet

__all__ = ["STRATEGIES", "create_strategy", "resolve_strategy"]

STRATEGIES: Registry[type[Strategy]] = Registry("strategy")


def resolve_strategy(name: str) -> list[type[Strategy]]:
    """The strategy classes that ``name`` stands for: one, or two joined by ``+``.

    Two strategies combine only if they protect in different ways (their ``family``): a
    quadratic penalty, isolation masks (HAT) and replay (distillation, synthetic rehearsal)
    each add something the others lack, whereas two penalties pull the same weights twice and
    two replays distil the same outputs twice.

    Raises:
        ConfigError: an unknown name (listing the registered ones) or a combination that is
            not meaningful (saying why).
    """
    parts = [p.strip() for p in name.split("+")]
    if len(parts) > 2:
        raise ConfigError(f"strategy {name!r}: at most two strategies combine (a+b)")
    classes = [STRATEGIES.get(p) for p in parts]
    if len(classes) == 2:
        (a, b), (fa, fb) = parts, (classes[0].family, classes[1].family)
        if "none" in (fa, fb):
            raise ConfigError(f"strategy {name!r}: 'naive' adds nothing to combine; use {b if fa == 'none' else a!r}")
        if fa == fb:
            raise ConfigError(
                f"strategy {name!r}: {a!r} and {b!r} are both {fa} strategies and would protect the same "
                f"weights twice; combine strategies of different kinds (quadratic: {_family('quadratic')}; "
                f"isolation: {_family('isolation')}; replay: {_family('replay')})")
    return classes


def _family(family: str) -> str:
    return ", ".join(n for n in STRATEGIES.names() if STRATEGIES.get(n).family == family)


def _options_for(cls: type[Strategy], options: Any) -> Any:
    """``cls``'s options from ``options``: its own Options instance, or the section of a config."""
    if cls.Options is None:
        return None
    if isinstance(options, cls.Options):
        return options
    section = getattr(cls.Options, "section", "")
    found = getattr(options, section, None) if options is not None and section else None
    return found if isinstance(found, cls.Options) else cls.Options()


def create_strategy(name: str, supernet: Supernet, options: Any = None) -> Strategy:
    """Build strategy ``name`` (or ``a+b``) for ``supernet``.

    Args:
        name: A registered name, or two joined by ``+`` (see :func:`resolve_strategy`).
        supernet: The supernet to protect.
        options: The strategy's options dataclass, or an object holding one section per
            strategy (a :class:`~wpl_nas.config.SearchConfig`); defaults where missing.

    Raises:
        ConfigError: unknown name or meaningless combination.
    """
    classes = resolve_strategy(name)
    built = [cls(supernet, _options_for(cls, options)) for cls in classes]
    if len(built) == 1:
        return built[0]
    from wpl_nas.strategies.compose import CompositeStrategy

    return CompositeStrategy(supernet, built)
