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
