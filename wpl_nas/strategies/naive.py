"""``naive``: plain weight sharing (the ENAS / SPOS baseline); candidates overwrite each other."""

from __future__ import annotations

from wpl_nas.strategies.base import Strategy
from wpl_nas.strategies.registry import STRATEGIES

__all__ = ["NaiveStrategy"]


@STRATEGIES.register("naive")
class NaiveStrategy(Strategy):
    """Does nothing: every hook is the base class's no-op."""
