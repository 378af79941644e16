"""The supernet (one class per space kind, built through :class:`Supernet`) and its operations."""

from wpl_nas.ops import OPS, create_op
from wpl_nas.supernet._base import SUPERNETS, Supernet
from wpl_nas.supernet.darts import DartsSupernet
from wpl_nas.supernet.mlp import MLPSupernet
from wpl_nas.supernet.mobilenet import MobileNetSupernet
from wpl_nas.supernet.network import CellSupernet
from wpl_nas.supernet.rnn import RNNSupernet

__all__ = ["OPS", "SUPERNETS", "CellSupernet", "DartsSupernet", "MLPSupernet", "MobileNetSupernet", "RNNSupernet",
           "Supernet", "create_op"]
