"""Consolidation strategies, registered by name; ``a+b`` combines two of different kinds.

Every module of this package is imported before the registry's first lookup, so a strategy is
one new file: its class, decorated with ``@STRATEGIES.register("name")``, registers itself, and
its ``Options`` become config section ``name`` with ``--name-option`` flags (see
``tests/extending/example_strategy.py``). Installed packages add strategies through the entry
point group ``wpl_nas.strategies`` (see :mod:`wpl_nas.registry`).
"""

from wpl_nas.strategies.anpyc import ANPyCOptions, ANPyCStrategy
from wpl_nas.strategies.base import Batches, CandidateContext, Strategy
from wpl_nas.strategies.compose import CompositeStrategy
from wpl_nas.strategies.distill import DistillOptions, DistillStrategy
from wpl_nas.strategies.ewc import EWCOptions, EWCStrategy, OnlineEWCOptions, OnlineEWCStrategy
from wpl_nas.strategies.hat import HATOptions, HATStrategy
from wpl_nas.strategies.mas import MASOptions, MASStrategy
from wpl_nas.strategies.naive import NaiveStrategy
from wpl_nas.strategies.protected import ProtectedSet
from wpl_nas.strategies.quadratic import QuadraticStrategy
from wpl_nas.strategies.registry import STRATEGIES, create_strategy, resolve_strategy
from wpl_nas.strategies.si import SIOptions, SIStrategy
from wpl_nas.strategies.synthetic import SyntheticOptions, SyntheticStrategy
from wpl_nas.strategies.wpl import WPLOptions, WPLStrategy

__all__ = [
    "STRATEGIES", "ANPyCOptions", "ANPyCStrategy", "Batches", "CandidateContext", "CompositeStrategy", "DistillOptions",
    "DistillStrategy", "EWCOptions", "EWCStrategy", "HATOptions", "HATStrategy", "MASOptions", "MASStrategy",
    "NaiveStrategy", "OnlineEWCOptions", "OnlineEWCStrategy", "ProtectedSet", "QuadraticStrategy", "SIOptions",
    "SIStrategy", "Strategy", "SyntheticOptions", "SyntheticStrategy", "WPLOptions", "WPLStrategy",
    "create_strategy", "resolve_strategy",
]
