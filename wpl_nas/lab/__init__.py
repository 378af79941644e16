"""The forgetting lab (``wpl-nas forgetting``): measure multi-model forgetting under each strategy.

Scenarios (registered in :data:`SCENARIOS`): ``two-model`` (the WPL paper's experiment: B shares
A's first layers), ``sequence`` (candidates of a space trained in turn, full retention matrix),
``split`` and ``permuted`` (task-incremental benchmarks on a multi-head supernet)::

    from wpl_nas.lab import LabConfig, run_lab
    result = run_lab(LabConfig(scenario="two-model", strategies="naive,wpl"), progress=False)
    print(result.table)
"""

from wpl_nas.lab.config import LabConfig, load_lab_config
from wpl_nas.lab.metrics import METRICS, LabRow, SeedOutcome, forgetting_metrics
from wpl_nas.lab.runner import LabResult, resolve_strategies, run_lab
from wpl_nas.lab.scenarios import SCENARIOS, Model, Plan, Scenario

__all__ = ["METRICS", "SCENARIOS", "LabConfig", "LabResult", "LabRow", "Model", "Plan", "Scenario", "SeedOutcome",
           "forgetting_metrics", "load_lab_config", "resolve_strategies", "run_lab"]
