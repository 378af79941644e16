"""Scores, the retained pool and forgetting."""

from wpl_nas.evaluation.ranking import kendall_tau
from wpl_nas.evaluation.retention import PoolEntry, RetainedPool
from wpl_nas.evaluation.scoring import accuracy

__all__ = ["PoolEntry", "RetainedPool", "accuracy", "kendall_tau"]
