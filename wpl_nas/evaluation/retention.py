"""The retained pool: earlier candidates re-scored as the search goes on, and their forgetting.

Definitions (used everywhere): the *score at training* A_k^k of candidate k is its score right
after its own training; its *latest re-score* A_k^now is its score on the same fixed
evaluation set after the most recent trial; its *forgetting* is A_k^k − A_k^now (the measures
are defined in :mod:`wpl_nas.evaluation.metrics`). For a score where lower is better
(perplexity) the pool is built with ``higher_is_better=False``: forgetting is then
A_k^now − A_k^k, still positive when a candidate got worse, and "best" means lowest.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

from wpl_nas.evaluation.metrics import retention_measures

__all__ = ["PoolEntry", "RetainedPool"]


@dataclass
class PoolEntry:
    """One candidate ever admitted to the pool, with its row of the retention matrix."""

    trial: int
    arch: str
    score: float
    rescores: dict[int, float] = field(default_factory=dict)  # after trial j -> score
    higher_is_better: bool = True

    @property
    def latest(self) -> float:
        return self.rescores[max(self.rescores)] if self.rescores else self.score

    @property
    def history(self) -> list[float]:
        """Its score at training, then its re-scores after later trials, in order."""
        return [self.score, *(s for j, s in sorted(self.rescores.items()) if j != self.trial)]

    @property
    def forgetting(self) -> float:
        """How much worse its latest re-score is than its score at training."""
        drop = self.score - self.latest
        return drop if self.higher_is_better else -drop


class RetainedPool:
    """A bounded pool: the ``best`` highest-scoring candidates plus the ``recent`` latest ones.

    Call order after each trial: :meth:`add` the new candidate, then :meth:`record` the
    re-scores of :meth:`members`. Entries that leave the pool keep their history (the
    retention matrix) but are no longer re-scored.

    Args:
        best: How many of the best candidates (by score at training) to keep.
        recent: How many of the most recent candidates to keep.
        higher_is_better: False for scores where lower is better (perplexity).
    """

    def __init__(self, *, best: int, recent: int, higher_is_better: bool = True) -> None:
        if best < 0 or recent < 0:
            raise ValueError(f"pool sizes must be >= 0, but got best={best}, recent={recent}")
        self.best = best
        self.recent = recent
        self.higher_is_better = higher_is_better
        self.entries: dict[int, PoolEntry] = {}

    def add(self, trial: int, arch: str, score: float) -> None:
        self.entries[trial] = PoolEntry(trial, arch, score, higher_is_better=self.higher_is_better)

    def members(self) -> list[int]:
        """Trial numbers currently in the pool, in trial order."""
        sign = -1.0 if self.higher_is_better else 1.0
        by_score = sorted(self.entries.values(), key=lambda e: (sign * e.score, e.trial))[: self.best]
        latest = sorted(self.entries)[-self.recent:] if self.recent else []
        return sorted({e.trial for e in by_score} | set(latest))

    def record(self, after_trial: int, scores: dict[int, float]) -> None:
        for trial, score in scores.items():
            self.entries[trial].rescores[after_trial] = score

    def summary(self, *, chance: float | None = None) -> dict[str, float]:
        """:func:`~wpl_nas.evaluation.metrics.retention_measures` over the current members
        (``rho`` is NaN without the ``chance`` score)."""
        return retention_measures([self.entries[t].history for t in self.members()], chance=chance,
                                  higher_is_better=self.higher_is_better)

    def matrix(self) -> dict[int, dict[int, float]]:
        """The retention matrix: ``{candidate trial: {after trial: score}}``."""
        return {t: dict(e.rescores) for t, e in self.entries.items()}

    def to_json(self, *, after_trial: int | None = None, chance: float | None = None) -> dict[str, Any]:
        """The pool as plain data: its members, its summary and every candidate's row."""
        return {"after_trial": after_trial, "members": self.members(), "summary": self.summary(chance=chance),
                "candidates": [{"trial": e.trial, "arch": e.arch, "score_at_training": e.score, "latest": e.latest,
                                "forgetting": e.forgetting, "rescores": {str(j): v for j, v in e.rescores.items()}}
                               for e in self.entries.values()]}

    def to_csv(self) -> str:
        """The retention matrix as CSV: one row per candidate, one ``after_N`` column per trial."""
        after = sorted({j for e in self.entries.values() for j in e.rescores})
        members = set(self.members())
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["trial", "arch", "member", "score_at_training", "latest", "forgetting",
                         *(f"after_{j}" for j in after)])
        for e in self.entries.values():
            writer.writerow([e.trial, e.arch, int(e.trial in members), e.score, e.latest, e.forgetting,
                             *(e.rescores.get(j, "") for j in after)])
        return out.getvalue()

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "recent": self.recent, "higher_is_better": self.higher_is_better,
                "entries": [(e.trial, e.arch, e.score, dict(e.rescores)) for e in self.entries.values()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.recent = state["best"], state["recent"]
        self.higher_is_better = state.get("higher_is_better", True)  # absent in runs saved before perplexity
        self.entries = {t: PoolEntry(t, a, s, dict(r), self.higher_is_better) for t, a, s, r in state["entries"]}
