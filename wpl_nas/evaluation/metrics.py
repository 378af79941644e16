"""Forgetting measures, defined once: the search's retained pool and the forgetting lab both use these.

Each candidate k has a *history*: its score right after its own training, A_k^k, then its
re-scores after later candidates, in order; its latest is A_k^now.

* forgetting of k = A_k^k − A_k^now (the WPL paper's err2 − err1; Avalanche's forgetting);
  ``forgetting_mean`` and ``forgetting_max`` over the candidates;
* ``backward_transfer`` = mean over k of A_k^now − A_k^k (Lopez-Paz & Ranzato 2017: negative
  when later training hurts earlier candidates, positive when it helps them);
* ``rho``: HAT's normalised forgetting ratio, mean over k of (A_k^now − A_R)/(A_k^k − A_R) − 1,
  with A_R the chance score (0: nothing forgotten, −1: back to chance); a candidate that never beat
  chance has no meaningful ratio and is left out;
* ``rank_tau``: Kendall's τ between the candidates' scores at training and their latest scores
  (rank stability: 1 when later training has not changed the supernet's ranking of them);
* ``retained_mean``: mean of the latest scores.

For a score where lower is better (perplexity), ``higher_is_better=False`` measures the same
things on the negated scores (so forgetting is A_k^now − A_k^k, positive when a candidate got
worse) and reports ``retained_mean`` in the score's own units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from wpl_nas.evaluation.ranking import kendall_tau

__all__ = ["MEASURES", "retention_measures"]

#: The keys of :func:`retention_measures`, in report order.
MEASURES = ("retained_mean", "forgetting_mean", "forgetting_max", "backward_transfer", "rho", "rank_tau")


def _mean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def retention_measures(histories: Sequence[Sequence[float]], *,
                       chance: float | Sequence[float] | None = None,
                       higher_is_better: bool = True) -> dict[str, float]:
    """Every entry of :data:`MEASURES` (see the module docstring) for ``histories``.

    Args:
        histories: One sequence per candidate: its score right after training, then its
            re-scores in order (a candidate not yet re-scored has a history of one score).
        chance: The chance score A_R, one for all or one per candidate; None leaves ``rho`` NaN.
        higher_is_better: False for scores where lower is better (see the module docstring).

    Returns:
        NaN for every measure when there is no candidate.

    Raises:
        ValueError: an empty history, or ``chance`` of the wrong length.
    """
    if any(len(h) == 0 for h in histories):
        raise ValueError("every history needs at least the score at training")
    if isinstance(chance, Sequence) and len(chance) != len(histories):
        raise ValueError(f"chance has {len(chance)} levels for {len(histories)} candidates")
    if not histories:
        return dict.fromkeys(MEASURES, math.nan)
    if not higher_is_better:
        flipped = retention_measures([[-v for v in h] for h in histories],
                                     chance=None if chance is None else (
                                         [-c for c in chance] if isinstance(chance, Sequence) else -chance))
        return {**flipped, "retained_mean": -flipped["retained_mean"]}
    first = [h[0] for h in histories]
    latest = [h[-1] for h in histories]
    forgetting = [f - last for f, last in zip(first, latest, strict=True)]
    levels = [math.nan] * len(histories) if chance is None else (
        list(chance) if isinstance(chance, Sequence) else [chance] * len(histories))
    ratios = [(last - c) / (f - c) - 1.0 if f > c else math.nan
              for f, last, c in zip(first, latest, levels, strict=True)]
    return {
        "retained_mean": _mean(latest),
        "forgetting_mean": _mean(forgetting),
        "forgetting_max": max(forgetting),
        "backward_transfer": -_mean(forgetting),
        "rho": _mean(ratios),
        "rank_tau": kendall_tau(first, latest) if len(histories) > 1 else math.nan,
    }
