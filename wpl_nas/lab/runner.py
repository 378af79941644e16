"""The forgetting lab's entry point: :func:`run_lab` runs a scenario with several strategies and seeds.

::

    from wpl_nas.lab import LabConfig, run_lab
    result = run_lab(LabConfig(scenario="two-model", strategies="naive,wpl"), progress=False)
    print(result.table)            # one row per strategy and shared depth
    result.rows[0].mean["rho"]     # HAT's normalised forgetting ratio, mean over seeds

For every seed, variant (plan) and strategy, a fresh supernet is built from the seed (so every
strategy starts from the same weights and sees the same batches), one SGD optimiser and one
strategy are shared by the plan's models, and each model gets its own
:class:`~wpl_nas.training.CandidateTrainer` (its own data and evaluation set). The models train
in order; after each, every earlier model is re-scored (the retention matrix), and while the
later models train the first one is probed every ``probe_every`` steps (the retention curve).
"""

from __future__ import annotations

import functools
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from wpl_nas.assembly import assemble, resolve_device
from wpl_nas.data import DATASETS, DataBundle, load_dataset
from wpl_nas.errors import ConfigError
from wpl_nas.lab.config import LabConfig
from wpl_nas.lab.metrics import LabRow, SeedOutcome, aggregate
from wpl_nas.lab.report import plot_retention, write_outcome, write_results, write_seeds, write_tensorboard
from wpl_nas.lab.scenarios import SCENARIOS, Model, Plan, Scenario
from wpl_nas.spaces import load_space
from wpl_nas.strategies import STRATEGIES, Strategy, resolve_strategy
from wpl_nas.supernet import Supernet
from wpl_nas.threads import use_threads
from wpl_nas.training import CandidateTrainer

__all__ = ["LabResult", "resolve_strategies", "run_lab", "strategy_bytes"]

CONFIG_FILE = "config.yaml"
#: Files and folders a lab run writes; a rerun into the same folder replaces them.
OUTPUTS = ("results.csv", "results.md", "seeds.csv", "retention.png", "retention", "tb", CONFIG_FILE)
#: Points of the retention curve per later model when ``probe_every`` is 0.
AUTO_PROBES = 20


@dataclass
class LabResult:
    """What :func:`run_lab` returns.

    Attributes:
        config: The resolved configuration (scenario defaults filled in, strategies listed).
        run_dir: The run folder.
        rows: One row per strategy and variant, mean and std over seeds.
        outcomes: Every (strategy, variant, seed) run: retention matrix, curve, measures.
        table: The results as a Markdown table.
        seconds: Wall time of the whole lab run.
    """

    config: LabConfig
    run_dir: Path
    rows: list[LabRow]
    outcomes: list[SeedOutcome]
    table: str
    seconds: float

    def row(self, strategy: str, variant: str = "") -> LabRow:
        """The row of ``strategy`` on ``variant`` (e.g. ``"shared2"``)."""
        for row in self.rows:
            if row.strategy == strategy and row.variant == variant:
                return row
        raise KeyError(f"no row for strategy {strategy!r}, variant {variant!r}")

    def summary(self) -> str:
        """The end-of-run report printed by ``wpl-nas forgetting``."""
        return "\n".join([
            self.table,
            "",
            f"run folder    {self.run_dir}  (results.csv, results.md, seeds.csv, retention.png, retention/)",
            f"TensorBoard   tensorboard --logdir {self.run_dir / 'tb'}",
            f"wall time     {self.seconds:.1f} s",
        ])


def resolve_strategies(text: str) -> list[str]:
    """``"naive,wpl+distill"`` -> the names, each checked; ``all`` stands for every registered strategy.

    Raises:
        ConfigError: an empty item, an unknown name (listing the registered ones) or a meaningless
            combination.
    """
    names: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise ConfigError(f"strategies={text!r} has an empty item; give names separated by commas, "
                              f"or 'all'; valid choices: {', '.join(STRATEGIES.names())}")
        expanded = STRATEGIES.names() if item == "all" else [item]
        for name in expanded:
            resolve_strategy(name)
            if name not in names:
                names.append(name)
    return names


def strategy_bytes(strategy: Strategy) -> int:
    """Bytes of the tensors in ``strategy.state_dict()`` (what it must keep to protect earlier models)."""
    return sum(t.numel() * t.element_size() for t in strategy.state_dict().values() if isinstance(t, torch.Tensor))


def _check_run_dir(run_dir: Path) -> None:
    """A rerun replaces a lab run folder's outputs; any other non-empty folder is refused."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise ConfigError(f"run folder {run_dir} exists and is not a folder; pass another --name or --runs-dir")
    if not any(run_dir.iterdir()):
        return
    try:
        saved = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
    except (OSError, yaml.YAMLError):
        saved = None
    if not (isinstance(saved, dict) and "scenario" in saved):
        raise ConfigError(f"run folder {run_dir} exists and is not a forgetting-lab run folder (a search run?); "
                          "pass another --name or --runs-dir")


class _Lab:
    """One lab run: every name and value is checked before the run folder is touched."""

    def __init__(self, config: LabConfig, *, progress: bool, command: Sequence[str] | None) -> None:
        config.validate()
        self.scenario: Scenario = SCENARIOS.get(config.scenario)()
        self.strategies = resolve_strategies(config.strategies)
        DATASETS.get(config.dataset)
        if config.space is not None:
            load_space(config.space)  # a wrong name fails before a (possibly slow) data load
        self.device = resolve_device(config.device)
        _check_run_dir(config.run_dir)
        use_threads(config.threads)
        self.data: DataBundle = load_dataset(config.dataset, data_dir=config.data_dir, download=config.download,
                                             val_fraction=config.val_fraction, seed=config.seed)
        self.config = self.scenario.resolve(config.replace(strategies=",".join(self.strategies)), self.data)
        # The first seed's plans are built now: they check what depends on the data (empty tasks).
        self.first_plans = self.scenario.plans(self.config, self.data, self.config.seed)
        self.progress = progress
        self.run_dir = self.config.run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for name in OUTPUTS:
            path = self.run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        self.config.dump(self.run_dir / CONFIG_FILE, extra={"command": list(command) if command else None})

    @property
    def title(self) -> str:
        seeds = self.config.seeds
        return f"Forgetting lab: {self.config.scenario} on {self.data.name}, {seeds} seed{'s' if seeds > 1 else ''}"

    def run(self) -> LabResult:
        start = time.perf_counter()
        config = self.config
        outcomes: list[SeedOutcome] = []
        total = len(config.seed_list) * len(self.first_plans) * len(self.strategies)
        with tqdm(total=total, disable=not self.progress, desc=f"forgetting {config.run_name}", unit="run",
                  dynamic_ncols=True) as bar:
            for i, seed in enumerate(config.seed_list):
                plans = self.first_plans if i == 0 else self.scenario.plans(config, self.data, seed)
                for plan in plans:
                    for strategy in self.strategies:
                        outcome = self._run_one(plan, strategy, seed)
                        write_outcome(self.run_dir, outcome)
                        write_tensorboard(self.run_dir, outcome)
                        outcomes.append(outcome)
                        metrics = outcome.metrics
                        bar.set_postfix(strategy=strategy, forgetting=f"{metrics['forgetting_mean']:+.3f}")
                        bar.update(1)
        rows = aggregate(outcomes)
        scenario = self.scenario
        table = write_results(self.run_dir, rows, scenario=config.scenario, title=self.title,
                              first=scenario.first_label, last=scenario.last_label, probed=scenario.probed_label)
        write_seeds(self.run_dir, outcomes, scenario=config.scenario)
        plot_retention(self.run_dir / "retention.png", outcomes, probed=scenario.probed_label, title=config.scenario)
        return LabResult(config, self.run_dir, rows, outcomes, table, time.perf_counter() - start)

    def _run_one(self, plan: Plan, name: str, seed: int) -> SeedOutcome:
        """Train ``plan``'s models in order with strategy ``name``; measure what the earlier ones keep."""
        config, device = self.config, self.device
        torch.manual_seed(seed)  # the same initial weights for every strategy and variant
        net = Supernet(plan.space, in_channels=self.data.input_shape[0], num_classes=plan.num_classes,
                       input_shape=tuple(self.data.input_shape), heads=plan.heads)
        parts = assemble(net, config, device=device, strategy=name, strategy_options=config.strategy_options)
        strategy = parts.strategy
        trainers = [parts.trainer(train_set=m.train, held_out=m.held_out,
                                  eval_set=(m.eval_set[0].to(device), m.eval_set[1].to(device)), epochs=m.epochs,
                                  seed=seed)
                    for m in plan.models]
        outcome = SeedOutcome(name, plan.variant, dict(plan.params), seed, [m.label for m in plan.models],
                              [str(m.arch) for m in plan.models], [m.chance for m in plan.models])
        probe = _Probe(trainers[0], plan.models[0], outcome)
        for j, (model, trainer) in enumerate(zip(plan.models, trainers, strict=True)):
            steps = model.epochs * math.ceil(len(model.train) / config.batch_size)
            probe.start(every=config.probe_every or max(1, round(steps / AUTO_PROBES)), active=j > 0)
            desc = f"{name}{' ' + plan.variant if plan.variant else ''} seed {seed}: {model.label}"
            with tqdm(total=steps, disable=not self.progress, leave=False, position=1, unit="step", desc=desc,
                      dynamic_ncols=True) as step_bar:
                result = trainer.train(model.arch, trial_index=j, progress=functools.partial(probe.step, step_bar))
            trainer.consolidate(model.arch, trial_index=j, score=result.score)
            row = [trainers[k].score(plan.models[k].arch) for k in range(j)] + [result.score]
            outcome.matrix.append(row)
            probe.boundary(result.steps if j > 0 else 0, row[0])
            outcome.train_seconds += result.seconds - probe.seconds
            outcome.train_steps += result.steps
        outcome.strategy_bytes = strategy_bytes(strategy)
        return outcome


class _Probe:
    """Scores the first model every ``every`` training steps of a later model: the retention curve."""

    def __init__(self, trainer: CandidateTrainer, model: Model, outcome: SeedOutcome) -> None:
        self.trainer, self.model, self.outcome = trainer, model, outcome
        self.offset = 0  # training steps of the later models before the current one
        self.done = 0
        self.every = 1
        self.active = False
        self.seconds = 0.0  # spent probing during the current model's training (not training time)

    def start(self, *, every: int, active: bool) -> None:
        self.done, self.every, self.active, self.seconds = 0, every, active, 0.0

    def step(self, bar: tqdm) -> None:
        self.done += 1
        bar.update(1)
        if self.active and self.done % self.every == 0:
            began = time.perf_counter()
            self.outcome.curve_steps.append(self.offset + self.done)
            self.outcome.curve_acc.append(self.trainer.score(self.model.arch))
            self.seconds += time.perf_counter() - began

    def boundary(self, steps: int, first_score: float) -> None:
        """After a model is trained and consolidated: the first model's score at that point."""
        self.offset += steps
        curve_steps, curve_acc = self.outcome.curve_steps, self.outcome.curve_acc
        if curve_steps and curve_steps[-1] == self.offset:
            curve_acc[-1] = first_score  # after consolidation, which may move weights (pruning)
        else:
            curve_steps.append(self.offset)
            curve_acc.append(first_score)


def run_lab(config: LabConfig | None = None, *, progress: bool = True, command: Sequence[str] | None = None,
            **overrides: Any) -> LabResult:
    """Run a forgetting scenario with every requested strategy and seed; write the run folder.

    Args:
        config: The lab configuration (defaults: the two-model experiment, naive and WPL, MNIST-1D).
        progress: Show progress bars.
        command: The command line to record in the run folder's ``config.yaml``.
        **overrides: Fields of ``config`` to replace, e.g. ``scenario="split"`` or ``wpl={"alpha": 10}``.

    Raises:
        ConfigError: any invalid value or name, before anything is written.
    """
    config = config or LabConfig()
    if overrides:
        config = config.replace(**overrides)
    return _Lab(config, progress=progress, command=command if command is not None else sys.argv).run()
