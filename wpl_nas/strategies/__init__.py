"""Consolidation strategies, registered by name; ``a+b`` combines two of different kinds."""

from wpl_nas.strategies.anpyc import ANPyCStrategy
from wpl_nas.strategies.base import Batches, CandidateContext, Strategy
from wpl_nas.strategies.compose import CompositeStrategy
from wpl_nas.strategies.distill import DistillStrategy
from wpl_nas.strategies.ewc import EWCStrategy, OnlineEWCStrategy
from wpl_nas.strategies.hat import HATStrategy
from wpl_nas.strategies.mas import MASStrategy
from wpl_nas.strategies.naive import NaiveStrategy
from wpl_nas.strategies.protected import ProtectedSet
from wpl_nas.strategies.quadratic import QuadraticStrategy
from wpl_nas.strategies.registry import STRATEGIES, create_strategy, resolve_strategy
from wpl_nas.strategies.si import SIStrategy
from wpl_nas.strategies.synthetic import SyntheticStrategy
from wpl_nas.strategies.wpl import WPLStrategy

__all__ = [
    "STRATEGIES", "ANPyCStrategy", "Batches", "CandidateContext", "CompositeStrategy", "DistillStrategy", "EWCStrategy",
    "HATStrategy", "MASStrategy", "NaiveStrategy", "OnlineEWCStrategy", "ProtectedSet", "QuadraticStrategy",
    "SIStrategy", "Strategy", "SyntheticStrategy", "WPLStrategy", "create_strategy", "resolve_strategy",
]
