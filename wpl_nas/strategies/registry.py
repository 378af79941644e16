"""The strategy registry, the factory, and composition of two strategies (``hat+distill``).

A strategy registers with ``@STRATEGIES.register("name")`` on its class: the name is written
there only. Its options class (``Options``) then becomes the config section ``name`` (``-`` read
as ``_``), so ``--name-option`` flags and ``name: {option: value}`` YAML keys exist for it in
``wpl-nas search`` and ``wpl-nas forgetting`` with no other edit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from wpl_nas.configs import Config, Options, section_name
from wpl_nas.errors import ConfigError
from wpl_nas.registry import Registry
from wpl_nas.strategies.base import Strategy
from wpl_nas.supernet import Supernet

__all__ = ["STRATEGIES", "StrategyRegistry", "create_strategy", "resolve_strategy"]


class StrategyRegistry(Registry[type[Strategy]]):
    """The registry of strategy classes, which also knows each one's config section."""

    def register(self, name: str) -> Callable[[type[Strategy]], type[Strategy]]:
        """Return a decorator that registers a strategy class under ``name`` and names its options'
        section after it (for messages such as ``online_ewc.lam must be >= 0``)."""
        add = super().register(name)

        def decorator(cls: type[Strategy]) -> type[Strategy]:
            if cls.Options is not None and not issubclass(cls.Options, Options):
                raise TypeError(f"strategy {name!r}: Options must subclass wpl_nas.configs.Options, "
                                f"but got {cls.Options!r}")
            add(cls)
            if cls.Options is not None:
                cls.Options.section = section_name(name)
            return cls

        return decorator

    def sections(self) -> dict[str, type[Options]]:
        """``{section: options class}`` of every registered strategy that has options, in
        registration order: the strategy sections of every config."""
        classes = {name: self.get(name) for name in self.names()}
        return {section_name(name): cls.Options for name, cls in classes.items() if cls.Options is not None}


#: Every module of this package registers (a strategy is one new file), then installed plugins'.
STRATEGIES = StrategyRegistry("strategy", package="wpl_nas.strategies", entry_points="wpl_nas.strategies")
Config.strategy_registry = STRATEGIES  # every config's strategy sections: one per strategy with options


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


def _options_by_name(name: str, classes: list[type[Strategy]], options: Any) -> Mapping[str, Any]:
    """``options`` as ``{registry name: options}`` for the parts of ``name``."""
    if options is None or all(cls.Options is None for cls in classes):  # naive takes no options: any will do
        return {}
    if isinstance(options, Config):
        return options.strategy_options
    if isinstance(options, Mapping):
        return options
    parts = [p.strip() for p in name.split("+")]
    owners = [part for part, cls in zip(parts, classes, strict=True)
              if cls.Options is not None and isinstance(options, cls.Options)]
    if not owners:
        raise TypeError(f"create_strategy({name!r}): options of type {type(options).__name__} belong to none of its "
                        f"parts; give {' or '.join(c.Options.__name__ for c in classes if c.Options)}, a config or "
                        "a mapping by strategy name")
    return {owners[0]: options}


def create_strategy(name: str, supernet: Supernet, options: Any = None) -> Strategy:
    """Build strategy ``name`` (or ``a+b``) for ``supernet``.

    Args:
        name: A registered name, or two joined by ``+`` (see :func:`resolve_strategy`).
        supernet: The supernet to protect.
        options: A strategy's own options instance (for ``a+b``: the part whose options they are),
            a config (:class:`~wpl_nas.configs.Config`: a ``SearchConfig`` or ``LabConfig``), a
            mapping from registry names to options (``config.strategy_options``), or None;
            defaults for any part not given.

    Raises:
        ConfigError: unknown name or meaningless combination.
        TypeError: ``options`` are another strategy's.
    """
    classes = resolve_strategy(name)
    given = _options_by_name(name, classes, options)
    built = []
    for part, cls in zip((p.strip() for p in name.split("+")), classes, strict=True):
        found = given.get(part)
        if cls.Options is not None and found is not None and not isinstance(found, cls.Options):
            raise TypeError(f"create_strategy({name!r}): the options of {part!r} must be {cls.Options.__name__}, "
                            f"but got {type(found).__name__}")
        built.append(cls(supernet, None if cls.Options is None else found or cls.Options()))
    if len(built) == 1:
        return built[0]
    from wpl_nas.strategies.compose import CompositeStrategy

    return CompositeStrategy(supernet, built)
