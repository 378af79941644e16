"""The supernet and its candidate operations."""

from wpl_nas.ops import OPS, create_op
from wpl_nas.supernet.network import Supernet

__all__ = ["OPS", "Supernet", "create_op"]
