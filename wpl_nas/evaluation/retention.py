"""The retained pool: earlier candidates re-scored as the search goes on, and their forgetting.

Definitions (used everywhere): the *score at training* A_k^k of candidate k is its score right
after its own training; its *latest re-score* A_k^now is its score on the same fixed
evaluation set after the most recent trial; its *forgetting* is A_k^k − A_k^now.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["PoolEntry", "RetainedPool"]


@dataclass
class PoolEntry:
    """One candidate ever admitted to the pool, with its row of the retention matrix."""

    trial: int
    arch: str
    score: float
    rescores: dict[int, float] = field(default_factory=dict)  # after trial j -> score

    @property
    def latest(self) -> float:
        return self.rescores[max(self.rescores)] if self.rescores else self.score

    @property
    def forgetting(self) -> float:
        return self.score - self.latest


class RetainedPool:
    """A bounded pool: the ``best`` highest-scoring candidates plus the ``recent`` latest ones.

    Call order after each trial: :meth:`add` the new candidate, then :meth:`record` the
    re-scores of :meth:`members`. Entries that leave the pool keep their history (the
    retention matrix) but are no longer re-scored.

    Args:
        best: How many of the best candidates (by score at training) to keep.
        recent: How many of the most recent candidates to keep.
    """

    def __init__(self, *, best: int, recent: int) -> None:
        if best < 0 or recent < 0:
            raise ValueError(f"pool sizes must be >= 0, but got best={best}, recent={recent}")
        self.best = best
        self.recent = recent
        self.entries: dict[int, PoolEntry] = {}

    def add(self, trial: int, arch: str, score: float) -> None:
        self.entries[trial] = PoolEntry(trial, arch, score)

    def members(self) -> list[int]:
        """Trial numbers currently in the pool, in trial order."""
        by_score = sorted(self.entries.values(), key=lambda e: (-e.score, e.trial))[: self.best]
        latest = sorted(self.entries)[-self.recent:] if self.recent else []
        return sorted({e.trial for e in by_score} | set(latest))

    def record(self, after_trial: int, scores: dict[int, float]) -> None:
        for trial, score in scores.items():
            self.entries[trial].rescores[after_trial] = score

    def summary(self) -> dict[str, float]:
        """Mean retained score, mean and max forgetting over the current members."""
        members = [self.entries[t] for t in self.members()]
        if not members:
            return {"retained_mean": float("nan"), "forgetting_mean": float("nan"),
                    "forgetting_max": float("nan")}
        forgetting = [e.forgetting for e in members]
        return {
            "retained_mean": sum(e.latest for e in members) / len(members),
            "forgetting_mean": sum(forgetting) / len(forgetting),
            "forgetting_max": max(forgetting),
        }

    def matrix(self) -> dict[int, dict[int, float]]:
        """The retention matrix: ``{candidate trial: {after trial: score}}``."""
        return {t: dict(e.rescores) for t, e in self.entries.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "recent": self.recent,
                "entries": [(e.trial, e.arch, e.score, dict(e.rescores)) for e in self.entries.values()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.recent = state["best"], state["recent"]
        self.entries = {t: PoolEntry(t, a, s, dict(r)) for t, a, s, r in state["entries"]}
