"""Search spaces: declarative YAML cell spaces, their DAGs and architecture strings."""

from wpl_nas.spaces._architecture import Architecture, edge_label
from wpl_nas.spaces._space import SearchSpace, StageSpec, builtin_spaces, load_space

__all__ = ["Architecture", "SearchSpace", "StageSpec", "builtin_spaces", "edge_label", "load_space"]
