"""Search spaces: declarative YAML files, one class per kind of space, and architecture strings."""

from wpl_nas.spaces._architecture import Architecture, Genotype, edge_label
from wpl_nas.spaces._cell import CellSpace, StageSpec
from wpl_nas.spaces._darts import DartsSpace
from wpl_nas.spaces._mlp import MLPSpace
from wpl_nas.spaces._mobilenet import MobileNetSpace
from wpl_nas.spaces._rnn import RNNSpace
from wpl_nas.spaces._space import (
                                   SPACE_KINDS,
                                   SearchSpace,
                                   SpecReader,
                                   builtin_spaces,
                                   load_space,
                                   named_spaces,
                                   same_space,
                                   space_file,
)

__all__ = ["SPACE_KINDS", "Architecture", "CellSpace", "DartsSpace", "Genotype", "MLPSpace", "MobileNetSpace",
           "RNNSpace", "SearchSpace", "SpecReader", "StageSpec", "builtin_spaces", "edge_label", "load_space",
           "named_spaces", "same_space", "space_file"]
