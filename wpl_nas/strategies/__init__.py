"""Consolidation strategies, registered by name; ``a+b`` combines two of different kinds."""

from wpl_nas.strategies.base import Batches, CandidateContext, Strategy
from wpl_nas.strategies.compose import CompositeStrategy
from wpl_nas.strategies.naive import NaiveStrategy
from wpl_nas.strategies.protected import ProtectedSet
from wpl_nas.strategies.registry import STRATEGIES, create_strategy, resolve_strategy
from wpl_nas.strategies.wpl import WPLStrategy

__all__ = ["STRATEGIES", "Batches", "CandidateContext", "CompositeStrategy", "NaiveStrategy", "ProtectedSet",
           "Strategy", "WPLStrategy", "create_strategy", "resolve_strategy"]
