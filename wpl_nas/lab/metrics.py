"""Forgetting measures of one run and their mean ± std over seeds.

Notation (DESIGN.md): models k = 0..K-1 are trained in order; the retention matrix holds
R[j][k], the accuracy of model k right after model j was trained (k <= j; a lower triangle with
K rows). The *first models* are those before the last one (A in the two-model experiment).

* reference score A_k^ref = R[k][k], right after its own training (before it is consolidated);
* final score A_k^final = R[K-1][k];
* lowest score of the first model (model 0) on its retention curve, probed while the later models
  train: forgetting often peaks mid-way and partly recovers when a later model learns features
  the first one can use (the same data in the two-model experiment);
* forgetting, ρ and the rest as defined once in :mod:`wpl_nas.evaluation.metrics`, over the
  earlier models (A_R = chance = 1 / classes).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from wpl_nas.evaluation.metrics import retention_measures

__all__ = ["METRICS", "LabRow", "SeedOutcome", "aggregate", "forgetting_metrics"]

#: Every metric of a row, in table order (CSV column names).
METRICS = ("first_before", "first_after", "first_min", "forgetting_mean", "forgetting_max", "rho", "last_acc",
           "ms_per_step", "strategy_bytes")


def forgetting_metrics(matrix: Sequence[Sequence[float]], chance: Sequence[float]) -> dict[str, float]:
    """The forgetting measures of one retention matrix (see the module docstring), computed by
    :func:`~wpl_nas.evaluation.retention_measures` over the earlier models' columns.

    Args:
        matrix: ``matrix[j][k]`` for ``k <= j``: K rows, row j holding j + 1 scores.
        chance: A_R of each model.

    Raises:
        ValueError: the matrix is not a lower triangle with at least two rows matching ``chance``.
    """
    count = len(matrix)
    if count < 2 or len(chance) != count or any(len(row) != j + 1 for j, row in enumerate(matrix)):
        raise ValueError(f"a retention matrix needs K >= 2 rows, row j with j + 1 scores, and K chance levels; "
                         f"got rows of lengths {[len(r) for r in matrix]} and {len(chance)} chance levels")
    earlier = range(count - 1)
    histories = [[matrix[j][k] for j in range(k, count)] for k in earlier]
    measures = retention_measures(histories, chance=list(chance[:-1]))
    return {
        "first_before": statistics.fmean(h[0] for h in histories),
        "first_after": measures["retained_mean"],
        "forgetting_mean": measures["forgetting_mean"],
        "forgetting_max": measures["forgetting_max"],
        "rho": measures["rho"],
        "last_acc": matrix[-1][-1],
    }


@dataclass
class SeedOutcome:
    """What one strategy did on one variant of a scenario with one seed.

    Attributes:
        strategy: The strategy's name (``a+b`` for a composition).
        variant: The plan's variant (``"shared2"``; ``""`` if the scenario has one).
        params: The variant's table columns.
        seed: The seed.
        labels: Each model's label, in training order.
        archs: Each model's architecture string.
        chance: Each model's chance accuracy.
        matrix: The retention matrix (see the module docstring).
        curve_steps: Training steps since the first model finished (0: right after it).
        curve_acc: The first model's accuracy at those steps (the retention curve).
        train_seconds: Wall time of the training steps (probes and consolidation excluded).
        train_steps: Training steps of every model together.
        strategy_bytes: Bytes of the tensors in the strategy's ``state_dict()`` at the end.
    """

    strategy: str
    variant: str
    params: dict[str, Any]
    seed: int
    labels: list[str]
    archs: list[str]
    chance: list[float]
    matrix: list[list[float]] = field(default_factory=list)
    curve_steps: list[int] = field(default_factory=list)
    curve_acc: list[float] = field(default_factory=list)
    train_seconds: float = 0.0
    train_steps: int = 0
    strategy_bytes: int = 0

    @property
    def metrics(self) -> dict[str, float]:
        """Every entry of :data:`METRICS` for this run."""
        return {**forgetting_metrics(self.matrix, self.chance),
                "first_min": min(self.curve_acc, default=math.nan),
                "ms_per_step": 1000.0 * self.train_seconds / max(self.train_steps, 1),
                "strategy_bytes": float(self.strategy_bytes)}

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "variant": self.variant, "params": self.params, "seed": self.seed,
                "models": [{"label": lab, "arch": a, "chance": c}
                           for lab, a, c in zip(self.labels, self.archs, self.chance, strict=True)],
                "matrix": self.matrix, "curve": {"steps": self.curve_steps, "accuracy": self.curve_acc},
                "train_seconds": self.train_seconds, "train_steps": self.train_steps,
                "strategy_bytes": self.strategy_bytes, "metrics": self.metrics}


@dataclass
class LabRow:
    """One table row: a strategy on one variant, over every seed.

    Attributes:
        strategy: The strategy's name.
        variant: The variant (``""`` if the scenario has one).
        params: The variant's table columns.
        seeds: How many seeds went into the row.
        mean: Mean of each metric over the seeds.
        std: Sample standard deviation of each metric (NaN with one seed).
    """

    strategy: str
    variant: str
    params: dict[str, Any]
    seeds: int
    mean: dict[str, float]
    std: dict[str, float]


def aggregate(outcomes: Sequence[SeedOutcome]) -> list[LabRow]:
    """One row per (strategy, variant), in order of first appearance, with mean ± std over seeds."""
    groups: dict[tuple[str, str], list[SeedOutcome]] = {}
    for outcome in outcomes:
        groups.setdefault((outcome.strategy, outcome.variant), []).append(outcome)
    rows = []
    for (strategy, variant), group in groups.items():
        per_seed = [o.metrics for o in group]
        mean, std = {}, {}
        for name in METRICS:
            values = [m[name] for m in per_seed if not math.isnan(m[name])]
            mean[name] = statistics.fmean(values) if values else math.nan
            std[name] = statistics.stdev(values) if len(values) > 1 else math.nan
        rows.append(LabRow(strategy, variant, dict(group[0].params), len(group), mean, std))
    return rows
