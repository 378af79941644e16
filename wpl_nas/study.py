"""Optuna pieces: samplers and pruners by name, storage URLs checked before use."""

from __future__ import annotations

from collections.abc import Callable

import optuna
import sqlalchemy.engine
import sqlalchemy.exc

from wpl_nas.errors import ConfigError
from wpl_nas.registry import Registry
from wpl_nas.sampler import ForgettingAwareSampler
from wpl_nas.spaces import SearchSpace

__all__ = ["GRID_LIMIT", "PRUNERS", "SAMPLERS", "check_storage_url", "create_pruner", "create_sampler"]

#: The grid sampler is offered for spaces up to this many architectures.
GRID_LIMIT = 10_000

SAMPLERS: Registry[Callable[[SearchSpace, int], optuna.samplers.BaseSampler]] = Registry("sampler")
PRUNERS: Registry[Callable[[], optuna.pruners.BasePruner]] = Registry("pruner")

SAMPLERS.add("tpe", lambda space, seed: optuna.samplers.TPESampler(seed=seed))
SAMPLERS.add("random", lambda space, seed: optuna.samplers.RandomSampler(seed=seed))
SAMPLERS.add("nsga2", lambda space, seed: optuna.samplers.NSGAIISampler(seed=seed))
SAMPLERS.add("forgetting-aware", lambda space, seed: ForgettingAwareSampler(
    optuna.samplers.TPESampler(seed=seed), space=space, seed=seed))


@SAMPLERS.register("grid")
def _grid(space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    if space.size > GRID_LIMIT:
        raise ConfigError(
            f"sampler 'grid' enumerates every architecture, but space {space.name!r} has {space.size:,} "
            f"(limit {GRID_LIMIT:,}); use sampler 'tpe' or 'random'"
        )
    return optuna.samplers.GridSampler({k: list(v) for k, v in space.choices.items()}, seed=seed)


PRUNERS.add("none", optuna.pruners.NopPruner)
PRUNERS.add("median", lambda: optuna.pruners.MedianPruner(n_startup_trials=5))
PRUNERS.add("halving", optuna.pruners.SuccessiveHalvingPruner)


def create_sampler(name: str, space: SearchSpace, *, seed: int) -> optuna.samplers.BaseSampler:
    """Sampler ``name`` for ``space`` seeded with ``seed`` (ConfigError on unknown names)."""
    return SAMPLERS.get(name)(space, seed)


def create_pruner(name: str) -> optuna.pruners.BasePruner:
    """Pruner ``name`` (ConfigError on unknown names)."""
    return PRUNERS.get(name)()


def check_storage_url(url: str) -> None:
    """Check that ``url`` is a database URL Optuna can open, without connecting.

    Raises:
        ConfigError: the URL does not parse, or names a database driver that is not installed.
    """
    try:
        parsed = sqlalchemy.engine.make_url(url)
        dialect = parsed.get_dialect()
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ValueError) as exc:
        raise ConfigError(
            f"invalid storage URL {url!r}: {exc}. Expected an SQLAlchemy database URL such as "
            "sqlite:///runs/study.db or postgresql://user:password@host/database"
        ) from None
    shown = parsed.render_as_string(hide_password=True) if parsed.password else url
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ConfigError(f"storage {shown!r} is an in-memory SQLite database: the study would vanish when the "
                          "search ends and could not be resumed; give a file, e.g. sqlite:///runs/study.db")
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise ConfigError(f"storage {shown!r} needs the database driver {exc.name or parsed.get_driver_name()!r}, "
                          f"which is not installed (pip install it, or name another driver in the URL, e.g. "
                          f"{parsed.get_backend_name()}+psycopg2://...)") from None
