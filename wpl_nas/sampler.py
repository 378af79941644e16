"""``ForgettingAwareSampler``: any Optuna sampler, steered away from candidates that would harm the pool.

Training a candidate overwrites the shared weights it has in common with earlier candidates. How
much that hurts an earlier candidate depends on how much they share: almost nothing in common
leaves it alone, and an identical path retrains (refreshes) it, while partial overlap interferes
most (Ramasesh et al. 2020 find forgetting worst at intermediate task similarity). So for each
protected candidate m (the best ``protect`` finished trials) and a proposal c, with

    o_m(c) = (weights of m's cell path that c also trains) / (weights of m's cell path)

the *harm* of c is the mean over m of 4·o_m·(1 − o_m) (0 at no or full overlap, 1 at half).
Weights are parameter counts of each (edge, op) over every cell of the space's supernet (for
other kinds of space, each unit of weights that only some candidates use); the skeleton every
candidate shares (stem, reductions, head) is left out, and so are dead edges.

Per trial the wrapper draws ``n_candidates`` complete architectures from the inner sampler and
picks proposal i with probability ∝ exp(−strength · harm_i). ``strength`` is the knob: 0 is the
inner sampler exactly (one draw, no choice), larger values prefer the least harmful proposals
more strongly, and ``math.inf`` always takes the least harmful one. Before any trial has finished
there is nothing to protect and the inner sampler decides alone.

Call order (Optuna's ``BaseSampler`` contract): ``before_trial``, ``infer_relative_search_space``
(the space's edges), ``sample_relative`` (draws and picks the architecture), ``sample_independent``
for any other parameter the objective suggests (delegated to the inner sampler), ``after_trial``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from wpl_nas.spaces import Architecture, SearchSpace, load_space
from wpl_nas.supernet import Supernet

__all__ = ["ForgettingAwareSampler", "harm", "op_weights"]


def op_weights(net: Supernet) -> dict[tuple[str, str], int]:
    """``{(unit, variant): parameters of its modules}`` over ``net``'s ``edges`` (every cell of a
    cell space: ``(edge label, op)``), the weights that only some candidates use."""
    counts: dict[tuple[str, str], int] = {}
    for name, param in net.named_parameters():
        unit = net.unit_of(name)
        if unit is not None:
            counts[unit] = counts.get(unit, 0) + param.numel()
    return counts


def harm(candidate: Architecture, protected: Sequence[Architecture],
         units: Callable[[Architecture], set[tuple[str, str]]], weights: dict[tuple[str, str], int]) -> float:
    """Mean over ``protected`` of 4·o·(1 − o), o the share of the member's searchable weights
    ``candidate`` trains; ``units`` gives a candidate's path (``Supernet.path_units``)."""
    if not protected:
        return 0.0
    trains = units(candidate)
    total = 0.0
    for member in protected:
        own = [k for k in units(member) if k in weights]
        size = sum(weights[k] for k in own)
        overlap = sum(weights[k] for k in own if k in trains) / size if size else 0.0
        total += 4.0 * overlap * (1.0 - overlap)
    return total / len(protected)


class ForgettingAwareSampler(BaseSampler):
    """Wraps ``sampler`` (TPE by default) and prefers proposals whose overlap with the protected
    pool is least harmful (see the module docstring for the measure and the knob).

    Args:
        sampler: The inner sampler [default: ``TPESampler(seed=seed)``].
        space: The search space (a name, a .yaml path or a space) whose edges the objective suggests.
        n_candidates: Architectures drawn from the inner sampler per trial.
        strength: How strongly to prefer less harmful proposals (0: the inner sampler alone).
        protect: How many of the best finished trials count as the protected pool.
        seed: Seed of the choice among proposals (and of the default inner sampler).
    """

    def __init__(self, sampler: BaseSampler | None = None, *, space: SearchSpace | str, n_candidates: int = 8,
                 strength: float = 10.0, protect: int = 5, seed: int | None = None) -> None:
        if n_candidates < 1:
            raise ValueError(f"n_candidates must be >= 1, but got {n_candidates=}")
        if not strength >= 0:
            raise ValueError(f"strength must be >= 0 (math.inf: always the least harmful), but got {strength=}")
        if protect < 1:
            raise ValueError(f"protect must be >= 1, but got {protect=}")
        self._inner = sampler if sampler is not None else optuna.samplers.TPESampler(seed=seed)
        self._space = load_space(space) if isinstance(space, str) else space
        # A throwaway supernet, only to know each candidate's path and its parameter counts: on
        # the meta device it has shapes but no storage, so even a large space costs nothing.
        with torch.device("meta"):
            net = Supernet(self._space, in_channels=1, num_classes=2)
        self._units = net.path_units
        self._weights = op_weights(net)
        self._edges = {label: CategoricalDistribution(list(ops)) for label, ops in self._space.choices.items()}
        self._n_candidates = n_candidates
        self._strength = strength
        self._protect = protect
        self._rng = np.random.RandomState(seed)

    @property
    def inner(self) -> BaseSampler:
        """The wrapped sampler."""
        return self._inner

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._inner.reseed_rng()

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._inner.after_trial(study, trial, state, values)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self._edges)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        protected = self.protected(study)
        draws = 1 if self._strength == 0 or not protected else self._n_candidates
        inner_space = self._inner.infer_relative_search_space(study, trial)
        proposals = [self._propose(study, trial, inner_space) for _ in range(draws)]
        if draws == 1:
            return proposals[0]
        harms = np.array([harm(self._arch(p), protected, self._units, self._weights) for p in proposals])
        if math.isinf(self._strength):
            choice = int(np.argmin(harms))
        else:
            logits = -self._strength * (harms - harms.min())
            probs = np.exp(logits) / np.exp(logits).sum()
            choice = int(self._rng.choice(len(proposals), p=probs))
        return proposals[choice]

    # --- helpers ------------------------------------------------------------------------
    def _propose(self, study: optuna.Study, trial: FrozenTrial,
                 inner_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        """One complete architecture from the inner sampler: its relative draw, then one
        independent draw for each edge it left open."""
        params = dict(self._inner.sample_relative(study, trial, inner_space)) if inner_space else {}
        proposal = {label: params[label] for label in self._edges if label in params}
        for label, dist in self._edges.items():
            if label not in proposal:
                proposal[label] = self._inner.sample_independent(study, trial, label, dist)
        return proposal

    def _arch(self, params: dict[str, Any]) -> Architecture:
        return self._space.make(params)

    def protected(self, study: optuna.Study) -> list[Architecture]:
        """The architectures of the best ``protect`` complete trials (the Pareto front's first ones
        for a multi-objective study) that suggested every edge of the space."""
        complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if all(label in t.params for label in self._edges)]
        if not complete:
            return []
        if len(study.directions) > 1:
            front = {t.number for t in study.best_trials}
            best = [t for t in complete if t.number in front]
        else:
            sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
            best = sorted(complete, key=lambda t: (sign * float(t.value if t.value is not None else 0.0), t.number))
        return [self._arch(t.params) for t in best[: self._protect]]
