"""wpl-nas: weight-sharing neural architecture search that does not forget.

The public API::

    import wpl_nas

    result = wpl_nas.run_search(wpl_nas.SearchConfig(trials=10))   # what `wpl-nas search` runs
    space = wpl_nas.load_space("nb201")                             # a space by name or .yaml path
    arch = space.parse("|nor_conv_3x3~0|+|skip_connect~0|none~1|+|skip_connect~0|none~1|avg_pool_3x3~2|")
    data = wpl_nas.load_dataset("mnist1d")
    supernet = wpl_nas.build_supernet("mnist1d", data)
    strategy = wpl_nas.create_strategy("wpl", supernet)                # or ewc, si, hat, wpl+distill, ...
    lab = wpl_nas.run_lab(wpl_nas.LabConfig(scenario="two-model"))      # what `wpl-nas forgetting` runs
    objective = wpl_nas.SupernetObjective(strategy="wpl", run_dir="runs/mine")  # for your own Optuna study
"""

from wpl_nas import threads as _threads  # noqa: F401  first: sets OpenMP's wait policy before torch loads

# isort: split
import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the names below are, for type checkers and editors; at run time they load on first use
    from wpl_nas.api import SearchResult, run_search
    from wpl_nas.assembly import Assembly, assemble, build_supernet, resolve_device
    from wpl_nas.callbacks import RetentionCallback, TensorBoardCallback
    from wpl_nas.config import SearchConfig, load_config
    from wpl_nas.data import DATASETS, DataBundle, Recipe, load_dataset, register_dataset
    from wpl_nas.errors import ConfigError, TrainingDiverged
    from wpl_nas.evaluation import RetainedPool
    from wpl_nas.lab import LabConfig, LabResult, run_lab
    from wpl_nas.objective import SupernetObjective
    from wpl_nas.run_folder import Run, RunFolder, load_run
    from wpl_nas.sampler import ForgettingAwareSampler
    from wpl_nas.spaces import Architecture, Genotype, SearchSpace, builtin_spaces, load_space, named_spaces
    from wpl_nas.strategies import STRATEGIES, Strategy, WPLOptions, create_strategy
    from wpl_nas.supernet import Supernet
    from wpl_nas.tracking.signals import SearchInterrupted
    from wpl_nas.training import CandidateTrainer

__version__ = "0.1.0"

#: Where each public name lives. They are imported on first use, not by ``import wpl_nas``: most of
#: them import torch, optuna or matplotlib (seconds), which ``wpl-nas --help`` and a mistyped flag
#: should not wait for (benchmarks/bench_startup.py).
_HOMES = {
    "wpl_nas.api": ("SearchResult", "run_search"),
    "wpl_nas.assembly": ("Assembly", "assemble", "build_supernet", "resolve_device"),
    "wpl_nas.callbacks": ("RetentionCallback", "TensorBoardCallback"),
    "wpl_nas.config": ("SearchConfig", "load_config"),
    "wpl_nas.data": ("DATASETS", "DataBundle", "Recipe", "load_dataset", "register_dataset"),
    "wpl_nas.errors": ("ConfigError", "TrainingDiverged"),
    "wpl_nas.evaluation": ("RetainedPool",),
    "wpl_nas.lab": ("LabConfig", "LabResult", "run_lab"),
    "wpl_nas.objective": ("SupernetObjective",),
    "wpl_nas.run_folder": ("Run", "RunFolder", "load_run"),
    "wpl_nas.sampler": ("ForgettingAwareSampler",),
    "wpl_nas.spaces": ("Architecture", "Genotype", "SearchSpace", "builtin_spaces", "load_space", "named_spaces"),
    "wpl_nas.strategies": ("STRATEGIES", "Strategy", "WPLOptions", "create_strategy"),
    "wpl_nas.supernet": ("Supernet",),
    "wpl_nas.tracking.signals": ("SearchInterrupted",),
    "wpl_nas.training": ("CandidateTrainer",),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "DATASETS",
    "STRATEGIES",
    "Architecture",
    "Assembly",
    "CandidateTrainer",
    "ConfigError",
    "DataBundle",
    "ForgettingAwareSampler",
    "Genotype",
    "LabConfig",
    "LabResult",
    "Recipe",
    "RetainedPool",
    "RetentionCallback",
    "Run",
    "RunFolder",
    "SearchConfig",
    "SearchInterrupted",
    "SearchResult",
    "SearchSpace",
    "Strategy",
    "Supernet",
    "SupernetObjective",
    "TensorBoardCallback",
    "TrainingDiverged",
    "WPLOptions",
    "assemble",
    "build_supernet",
    "builtin_spaces",
    "create_strategy",
    "load_config",
    "load_dataset",
    "load_run",
    "load_space",
    "named_spaces",
    "register_dataset",
    "resolve_device",
    "run_lab",
    "run_search",
]


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use (then kept here); a submodule
    (``wpl_nas.evaluation``), imported as ``import wpl_nas`` used to import it."""
    home = _HOME.get(name)
    if home is not None:
        value = getattr(importlib.import_module(home), name)
        globals()[name] = value  # the next access is a plain attribute
        return value
    if not name.startswith("_"):  # not a probe such as __wrapped__
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":  # the submodule exists but an import inside it failed
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
