"""The retained pool: earlier candidates re-scored as the search goes on, and their forgetting.

Definitions (used everywhere): the *score at training* A_k^k of candidate k is its score right
after its own training; its *latest re-score* A_k^now is its score on the same fixed
evaluation set after the most recent trial; its *forgetting* is A_k^k − A_k^now (the measures
are defined in :mod:`wpl_nas.evaluation.metrics`). For a score where lower is better
(perplexity) the pool is built with ``higher_is_better=False``: forgetting is then
A_k^now − A_k^k, still positive when a candidate got worse, and "best" means lowest.

Joining is not forgetting: after trial n the pool's mean retained score also moves because a
candidate *joined* (a chance-level newcomer pulls it down though nothing was forgotten) or left.
:meth:`RetainedPool.changes` therefore separates the *earlier members* (in the pool after the
previous re-score and still in it) from those that joined or left, and
:meth:`RetainedPool.step_measures` measures the earlier members alone (:data:`STEP_MEASURES`).

Re-scoring every K trials (``--rescore-every``): between two re-scores a candidate still joins
with its score at training, recorded as taken after its own trial (:meth:`RetainedPool.record`
with ``rescored=False``, a *join*), and no other member is scored. A join is not a re-score:
:meth:`RetainedPool.changes` compares each re-score with the previous *re-score*, so the earlier
members' step forgetting covers every trial since (K of them), and the candidates that joined in
between count as joined.

One entry per architecture: a candidate whose architecture string is already in the pool
*replaces* that entry as the pool's member (it has just been trained again on the shared weights,
so the old entry's score at training no longer describes what the supernet holds; re-scoring
both would count one architecture twice). The replaced entry keeps its row of the retention
matrix, is no longer re-scored, and names its successor (:meth:`RetainedPool.replaced_by`).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from wpl_nas.evaluation.metrics import retention_measures

__all__ = ["CSV_COLUMNS", "RESCORES_ATTR", "STEP_MEASURES", "PoolChanges", "PoolEntry", "RetainedPool",
           "matrix_from_csv", "retention_matrix"]

#: The user attribute of a search's trial holding the pool's re-score after it, ``{member trial:
#: score}`` (a member that joined with this trial: its score at training). Recorded on the trial
#: itself, so the study's records grow by the pool's size per trial, however long the search; runs
#: made before it kept the whole matrix in the study attribute ``retention``
#: (:func:`retention_matrix` reads both).
RESCORES_ATTR = "rescores"

#: The keys of :meth:`RetainedPool.step_measures`: measures over the earlier members only.
STEP_MEASURES = ("earlier_retained_mean", "earlier_forgetting_mean", "forgetting_this_trial")
#: ``retention.csv``'s columns, one row per re-score (long format; with ``--rescore-every`` K > 1, a
#: candidate that joins between re-scores has its row of score at training too): the trial it followed, the
#: candidate, its score then, its score at training and its forgetting at that re-score (score at
#: training − score; the other way round when lower is better). A row per re-score rather than a
#: column per trial, so that each trial only appends its rows: the file's cost per trial stays that
#: of the pool, however long the search.
CSV_COLUMNS = ("after_trial", "trial", "score", "score_at_training", "forgetting")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


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


@dataclass(frozen=True)
class PoolChanges:
    """How the pool changed at one re-score (:meth:`RetainedPool.changes`).

    Attributes:
        after_trial: The trial after which the pool was re-scored.
        previous: The trial of the re-score before it (None for the first).
        earlier: Members now that were members at the previous re-score too (their change is
            forgetting, or backward transfer).
        joined: Members now that were not members then (the new candidate, or a candidate that
            replaced an entry of the same architecture).
        left: Members then that are members no longer (pushed out, or replaced).
    """

    after_trial: int
    previous: int | None
    earlier: list[int]
    joined: list[int]
    left: list[int]


class RetainedPool:
    """A bounded pool: the ``best`` highest-scoring candidates plus the ``recent`` latest ones,
    one per architecture (the latest entry of an architecture replaces the earlier ones; see the
    module docstring).

    Call order after each trial: :meth:`add` the new candidate, then :meth:`record` the
    re-scores of :meth:`members` (or, between re-scores, the new candidate's join). Entries that
    leave the pool keep their history (the retention matrix) but are no longer re-scored.

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
        #: Trials after which only the new candidate was recorded (its join), not a re-score.
        self.joins: set[int] = set()

    def add(self, trial: int, arch: str, score: float) -> None:
        self.entries[trial] = PoolEntry(trial, arch, score, higher_is_better=self.higher_is_better)

    def replaced_by(self) -> dict[int, int]:
        """``{trial: later trial}`` for each entry whose architecture a later entry trained again
        (the latest entry of an architecture stands for it)."""
        latest: dict[str, int] = {}
        for trial in sorted(self.entries):
            latest[self.entries[trial].arch] = trial
        return {t: latest[e.arch] for t, e in self.entries.items() if latest[e.arch] != t}

    def members(self) -> list[int]:
        """Trial numbers currently in the pool, in trial order: among the latest entry of each
        architecture, the ``best`` by score at training and the ``recent`` latest."""
        sign = -1.0 if self.higher_is_better else 1.0
        replaced = self.replaced_by()
        current = [e for t, e in self.entries.items() if t not in replaced]
        by_score = sorted(current, key=lambda e: (sign * e.score, e.trial))[: self.best]
        latest = sorted(e.trial for e in current)[-self.recent:] if self.recent else []
        return sorted({e.trial for e in by_score} | set(latest))

    def changes(self, after_trial: int) -> PoolChanges:
        """Who joined, left and stayed at the re-score after ``after_trial`` (recorded with
        :meth:`record`), compared with the re-score before it (joins in between are not re-scores).
        Pure function of the entries, so it gives the same answer when the after-trial work is
        redone on resume."""
        previous = max((j for e in self.entries.values() for j in e.rescores
                        if j < after_trial and j not in self.joins), default=None)
        now = self.members()
        before = [] if previous is None else [t for t, e in sorted(self.entries.items()) if previous in e.rescores]
        return PoolChanges(after_trial, previous, earlier=[t for t in now if t in before],
                           joined=[t for t in now if t not in before], left=[t for t in before if t not in now])

    def step_measures(self, after_trial: int) -> dict[str, float]:
        """Every entry of :data:`STEP_MEASURES` at the re-score after ``after_trial``, over the
        earlier members only (NaN when there are none), so that a candidate joining or leaving
        does not move them:

        * ``earlier_retained_mean``: their mean latest re-score;
        * ``earlier_forgetting_mean``: their mean forgetting (score at training − latest);
        * ``forgetting_this_trial``: their mean drop from the previous re-score to this one: the
          forgetting that training this trial's candidate caused (negative: it helped them), or,
          re-scoring every K trials, the candidates trained since the previous re-score.
        """
        changes = self.changes(after_trial)
        earlier = [self.entries[t] for t in changes.earlier]
        sign = 1.0 if self.higher_is_better else -1.0
        steps = [sign * (e.rescores[changes.previous] - e.rescores[after_trial]) for e in earlier
                 if changes.previous in e.rescores and after_trial in e.rescores]
        return {"earlier_retained_mean": _mean([e.latest for e in earlier]),
                "earlier_forgetting_mean": _mean([e.forgetting for e in earlier]),
                "forgetting_this_trial": _mean(steps)}

    def recorded(self, after_trial: int) -> bool:
        """Whether a re-score after trial ``after_trial`` is recorded (for any entry)."""
        return any(after_trial in e.rescores for e in self.entries.values())

    def record(self, after_trial: int, scores: dict[int, float], *, rescored: bool = True) -> None:
        """Record ``scores`` (``{member trial: score}``) as taken after trial ``after_trial``: the
        pool's re-score, or, with ``rescored=False``, only the join of the candidate of that trial
        (its score at training; the other members keep their latest re-scores)."""
        for trial, score in scores.items():
            self.entries[trial].rescores[after_trial] = score
        if rescored:
            self.joins.discard(after_trial)
        else:
            self.joins.add(after_trial)

    def summary(self, *, chance: float | None = None) -> dict[str, float]:
        """:func:`~wpl_nas.evaluation.metrics.retention_measures` over the current members
        (``rho`` is NaN without the ``chance`` score)."""
        return retention_measures([self.entries[t].history for t in self.members()], chance=chance,
                                  higher_is_better=self.higher_is_better)

    def matrix(self) -> dict[int, dict[int, float]]:
        """The retention matrix: ``{candidate trial: {after trial: score}}``."""
        return {t: dict(e.rescores) for t, e in self.entries.items()}

    def to_json(self, *, after_trial: int | None = None, chance: float | None = None) -> dict[str, Any]:
        """The pool as plain data: its members, its summary (with :meth:`step_measures` when
        ``after_trial`` is given), who joined and left, and the candidates it holds (with those that
        left it at this re-score): architecture, score at training, latest re-score, forgetting. Their
        rows of the retention matrix are not repeated here: a best member's row grows with the search,
        and ``retention.csv`` has them all (:func:`matrix_from_csv`); runs made before kept every
        candidate ever pooled, with its row as ``rescores``."""
        summary = self.summary(chance=chance)
        out: dict[str, Any] = {"after_trial": after_trial, "members": self.members(),
                               "higher_is_better": self.higher_is_better}
        shown = set(self.members())
        if after_trial is not None:
            changes = self.changes(after_trial)
            summary |= self.step_measures(after_trial)
            out |= {"earlier": changes.earlier, "joined": changes.joined, "left": changes.left}
            shown |= set(changes.left)
        replaced = self.replaced_by()
        return {**out, "summary": summary,
                "candidates": [{"trial": e.trial, "arch": e.arch, "score_at_training": e.score, "latest": e.latest,
                                "forgetting": e.forgetting, "replaced_by": replaced.get(e.trial)}
                               for t, e in sorted(self.entries.items()) if t in shown]}

    def csv_rows(self, after_trial: int) -> str:
        """The re-score after ``after_trial`` as :data:`CSV_COLUMNS` rows (no header), one per
        candidate scored, in trial order: what ``retention.csv`` gains after that trial."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        for t in sorted(self.entries):
            e = self.entries[t]
            if after_trial in e.rescores:
                writer.writerow(self._csv_row(e, after_trial))
        return out.getvalue()

    def to_csv(self) -> str:
        """The retention matrix as CSV in long format: the header (:data:`CSV_COLUMNS`), then one row
        per re-score, by the trial it followed, then by candidate: the header followed by
        :meth:`csv_rows` of every re-score in order, so that appending each trial's rows builds the
        same file."""
        rows = sorted((j, e.trial) for e in self.entries.values() for j in e.rescores)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for j, t in rows:
            writer.writerow(self._csv_row(self.entries[t], j))
        return out.getvalue()

    @staticmethod
    def _csv_row(e: PoolEntry, after_trial: int) -> list[Any]:
        score = e.rescores[after_trial]
        drop = e.score - score
        return [after_trial, e.trial, score, e.score, drop if e.higher_is_better else -drop]

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "recent": self.recent, "higher_is_better": self.higher_is_better,
                "entries": [(e.trial, e.arch, e.score, dict(e.rescores)) for e in self.entries.values()],
                "joins": sorted(self.joins)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.recent = state["best"], state["recent"]
        self.higher_is_better = state.get("higher_is_better", True)  # absent in runs saved before perplexity
        self.entries = {t: PoolEntry(t, a, s, dict(r), self.higher_is_better) for t, a, s, r in state["entries"]}
        self.joins = {int(j) for j in state.get("joins", ())}  # absent before --rescore-every: every record re-scored


def retention_matrix(study: Any) -> dict[int, dict[int, float]]:
    """The retention matrix ``{candidate trial: {after trial: score}}`` (as :meth:`RetainedPool.matrix`)
    of a search's Optuna ``study``: each finished trial's :data:`RESCORES_ATTR`, over the whole-matrix
    study attribute ``retention`` that runs made before it wrote (a run resumed across the change
    holds both: the old rows, then the new trials' re-scores). Trials that did not finish (lost in
    flight, failed) are left out: their re-scores never reached the checkpoint."""
    legacy: Mapping[str, Mapping[str, float]] = study.user_attrs.get("retention", {})
    matrix = {int(t): {int(j): float(v) for j, v in row.items()} for t, row in legacy.items()}
    for trial in study.get_trials(deepcopy=False):
        rescores = trial.user_attrs.get(RESCORES_ATTR)
        if rescores is None or trial.state.name not in ("COMPLETE", "PRUNED"):
            continue
        for member, score in rescores.items():
            matrix.setdefault(int(member), {})[trial.number] = float(score)
    return {t: dict(sorted(row.items())) for t, row in sorted(matrix.items())}


def matrix_from_csv(text: str) -> tuple[dict[int, dict[int, float]], dict[int, float]]:
    """The retention matrix ``{candidate trial: {after trial: score}}`` and each candidate's score at
    training from the text of a ``retention.csv`` (:data:`CSV_COLUMNS`). A last line cut short (a
    search still writing it) is left out.

    Raises:
        ValueError: the header is not :data:`CSV_COLUMNS` (a file from before the long format).
    """
    rows = list(csv.reader(io.StringIO(text)))
    if rows and not text.endswith("\n"):
        rows.pop()  # a line still being written: its last field may be cut short
    if not rows or tuple(rows[0]) != CSV_COLUMNS:
        raise ValueError(f"not a long-format retention.csv: its header is {rows[0] if rows else None}, "
                         f"not {list(CSV_COLUMNS)}")
    matrix: dict[int, dict[int, float]] = {}
    at_training: dict[int, float] = {}
    for row in rows[1:]:
        try:
            after, trial, score, base = int(row[0]), int(row[1]), float(row[2]), float(row[3])
        except (ValueError, IndexError):
            continue  # a row still being written
        matrix.setdefault(trial, {})[after] = score
        at_training[trial] = base
    return matrix, at_training
