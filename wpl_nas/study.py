"""Optuna pieces: samplers and pruners by name (storages: :mod:`wpl_nas.storage`)."""

from __future__ import annotations

from collections.abc import Callable

import optuna

from wpl_nas.errors import ConfigError
from wpl_nas.registry import Registry
from wpl_nas.sampler import ForgettingAwareSampler
from wpl_nas.spaces import SearchSpace
from wpl_nas.storage import check_storage_url  # re-exported: its home before wpl_nas.storage

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
