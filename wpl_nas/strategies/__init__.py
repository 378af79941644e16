"""Consolidation strategies, registered by name (``naive``, ``wpl``)."""

from wpl_nas.strategies.base import Batches, CandidateContext, Strategy
from wpl_nas.strategies.naive import NaiveStrategy
from wpl_nas.strategies.registry import STRATEGIES, create_strategy
from wpl_nas.strategies.wpl import WPLStrategy

__all__ = ["STRATEGIES", "Batches", "CandidateContext", "NaiveStrategy", "Strategy", "WPLStrategy",
           "create_strategy"]
