"""Scores, the retained pool and forgetting."""

from wpl_nas.evaluation.metrics import MEASURES, retention_measures
from wpl_nas.evaluation.ranking import kendall_tau, spearman_rho, top_k_overlap
from wpl_nas.evaluation.retention import (
    RESCORES_ATTR,
    STEP_MEASURES,
    PoolChanges,
    PoolEntry,
    RetainedPool,
    retention_matrix,
)
from wpl_nas.evaluation.scoring import METRICS, Metric, accuracy, perplexity

__all__ = ["MEASURES", "METRICS", "RESCORES_ATTR", "STEP_MEASURES", "Metric", "PoolChanges", "PoolEntry",
           "RetainedPool", "accuracy", "kendall_tau", "perplexity", "retention_matrix", "retention_measures",
           "spearman_rho", "top_k_overlap"]
