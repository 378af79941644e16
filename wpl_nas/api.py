"""The programmatic entry points; the CLI only translates flags into these calls.

::

    import wpl_nas
    result = wpl_nas.run_search(wpl_nas.SearchConfig(trials=10))
    print(result.best_arch, result.best_score, result.run_dir)
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
import torch
import yaml
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from wpl_nas.config import SearchConfig
from wpl_nas.data import DATASETS, DataBundle, load_dataset
from wpl_nas.errors import ConfigError
from wpl_nas.evaluation import RetainedPool
from wpl_nas.spaces import Architecture, SearchSpace, load_space
from wpl_nas.strategies import Strategy, create_strategy, resolve_strategy
from wpl_nas.study import PRUNERS, check_storage_url, create_pruner, create_sampler
from wpl_nas.supernet import Supernet
from wpl_nas.tracking import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from wpl_nas.tracking.tensorboard import TrialLogger
from wpl_nas.training import CandidateTrainer, TrainResult

__all__ = ["Run", "SearchResult", "build_supernet", "load_run", "resolve_device", "run_search"]

CHECKPOINT = "checkpoints/last.pt"
CONFIG_FILE = "config.yaml"


@dataclass
class SearchResult:
    """What :func:`run_search` returns.

    Attributes:
        study: The Optuna study (one trial per candidate).
        best_arch: The best candidate by score at training, or None if no trial completed.
        best_score: Its validation accuracy at training time.
        run_dir: The run folder (config, study database, TensorBoard events, checkpoint).
        pool: Summary of the retained pool: mean retained score, mean and max forgetting.
        storage: The storage URL of the study.
    """

    study: optuna.Study
    best_arch: Architecture | None
    best_score: float
    run_dir: Path
    pool: dict[str, float]
    storage: str

    def summary(self) -> str:
        """The end-of-search report printed by ``wpl-nas search``."""
        p = self.pool
        storage = self.storage
        best = (
            [f"best architecture   {self.best_arch}",
             f"best score          {self.best_score:.4f}  (validation accuracy at training time)"]
            if self.best_arch is not None else ["best architecture   none: no trial completed (all pruned?)"]
        )
        lines = [
            *best,
            f"retained pool       mean accuracy {p['retained_mean']:.4f}, "
            f"forgetting mean {p['forgetting_mean']:+.4f}, max {p['forgetting_max']:+.4f}",
            f"run folder          {self.run_dir}",
            f"TensorBoard         tensorboard --logdir {self.run_dir / 'tb'}",
            f"Optuna dashboard    optuna-dashboard {storage}",
        ]
        return "\n".join(lines)


@dataclass
class Run:
    """A run folder opened by :func:`load_run`."""

    config: SearchConfig
    study: optuna.Study
    run_dir: Path


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA if available, else CPU; anything else must be usable here.

    Raises:
        ConfigError: unknown device string, or a device that is not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; valid choices: auto, cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for, but CUDA is not available here; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} was asked for, but MPS is not available here; use --device cpu")
    return device


def build_supernet(space: SearchSpace | str, data: DataBundle, *, seed: int = 0) -> Supernet:
    """A freshly initialised supernet of ``space`` (a space or its name / path) for ``data``.

    Raises:
        ConfigError: the space's dimensionality does not fit the data.
    """
    space = load_space(space) if isinstance(space, str) else space
    data_dims = len(data.input_shape) - 1
    if data_dims != space.dims:
        raise ConfigError(
            f"space {space.name!r} is for {space.dims}-D inputs, but dataset {data.name!r} is "
            f"{data_dims}-D (per-sample shape {data.input_shape}); pick a matching --space or --dataset"
        )
    torch.manual_seed(seed)
    return Supernet(space, in_channels=data.input_shape[0], num_classes=data.num_classes)


def load_run(run_dir: str | Path) -> Run:
    """Open a run folder written by :func:`run_search`: its config and its study."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a wpl-nas run folder: {CONFIG_FILE} is missing")
    config = _saved_config(path)
    study = optuna.load_study(study_name=config.resolved_study_name, storage=config.resolved_storage)
    return Run(config, study, run_dir)


def _saved_config(path: Path) -> SearchConfig:
    data = yaml.safe_load(path.read_text()) or {}
    data.pop("command", None)
    return SearchConfig.from_dict(data, where=str(path))


def _check_resumable(saved_path: Path, config: SearchConfig) -> None:
    saved = _saved_config(saved_path).to_dict()
    new = config.to_dict()
    changed = [k for k in new if k not in SearchConfig.RESUMABLE_CHANGES and saved.get(k) != new[k]]
    if changed:
        diffs = "; ".join(f"{k}: saved {saved.get(k)!r}, now {new[k]!r}" for k in changed)
        raise ConfigError(
            f"run folder {saved_path.parent} holds a study with a different configuration ({diffs}). "
            f"Only {', '.join(SearchConfig.RESUMABLE_CHANGES)} may change when resuming; "
            "pass a new --study-name to start another study"
        )


class _Search:
    """One search: set up (validating everything before writing anything), resume, run."""

    def __init__(self, config: SearchConfig, *, progress: bool, command: Sequence[str] | None) -> None:
        config.validate()
        # 1. Every name and value is checked before the run folder is touched.
        self.config = config
        self.space = load_space(config.space)
        DATASETS.get(config.dataset)
        resolve_strategy(config.strategy)
        PRUNERS.get(config.pruner)
        sampler = create_sampler(config.sampler, self.space, seed=config.seed)  # checks grid's size limit
        check_storage_url(config.resolved_storage)
        self.device = resolve_device(config.device)
        if config.threads:
            torch.set_num_threads(config.threads)
        self.run_dir = config.run_dir
        saved = self.run_dir / CONFIG_FILE
        if saved.is_file():
            _check_resumable(saved, config)
        self.data = load_dataset(config.dataset, data_dir=config.data_dir, download=config.download,
                                 val_fraction=config.val_fraction, seed=config.seed)
        self.supernet = build_supernet(self.space, self.data, seed=config.seed).to(self.device)
        self.strategy: Strategy = create_strategy(
            config.strategy, self.supernet, config).to(self.device)
        self.optimizer = torch.optim.SGD(self.supernet.parameters(), lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        val, train = self.data.val, self.data.train
        if not (isinstance(val, TensorDataset) and isinstance(train, TensorDataset)):
            raise TypeError(f"dataset {config.dataset!r} must load as TensorDatasets (see wpl_nas.data)")
        n_eval = config.eval_samples or len(val)
        eval_set = (val.tensors[0][:n_eval].to(self.device), val.tensors[1][:n_eval].to(self.device))
        self.trainer = CandidateTrainer(
            self.supernet, self.strategy, train_set=train, held_out=val, eval_set=eval_set,
            optimizer=self.optimizer, batch_size=config.batch_size, epochs=config.epochs,
            grad_clip=config.grad_clip, eval_batch_size=config.eval_batch_size, seed=config.seed)
        self.pool = RetainedPool(best=config.pool_best, recent=config.pool_recent)
        # Trials whose training is folded into the supernet state: number -> (state, value).
        self.finished: dict[int, tuple[str, float | None]] = {}
        self.progress = progress

        # 2. Open (or create) the study, reconcile it with the checkpoint, then record the config.
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.study = optuna.create_study(
                study_name=config.resolved_study_name, storage=config.resolved_storage,
                direction="maximize", load_if_exists=True, pruner=create_pruner(config.pruner),
                sampler=sampler)
        except (ImportError, sqlalchemy.exc.SQLAlchemyError) as exc:
            raise ConfigError(f"cannot open storage {config.resolved_storage!r}: {exc}") from None
        self._resume()
        if not saved.is_file():
            config.dump(saved, extra={"command": list(command) if command else None})
        self.logger = TrialLogger(self.run_dir / "tb")

    # --- resume ----------------------------------------------------------------------
    def _resume(self) -> None:
        path = self.run_dir / CHECKPOINT
        if path.is_file():
            state = load_checkpoint(path, map_location=self.device)
            self.supernet.load_state_dict(state["supernet"])
            self.strategy.load_state_dict(state["strategy"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.pool.load_state_dict(state["pool"])
            self.finished = {int(k): (v[0], v[1]) for k, v in state["finished"].items()}
            restore_rng(state["rng"])
        states = optuna.trial.TrialState
        for trial in self.study.get_trials(deepcopy=False):
            done = self.finished.get(trial.number)
            if trial.state == states.RUNNING:
                if done is None:  # the trial in flight when the search stopped: lost
                    self.study.tell(trial.number, state=states.FAIL)
                else:  # trained and checkpointed, but not yet told
                    self.study.tell(trial.number, done[1] if done[0] == "COMPLETE" else None,
                                    state=states[done[0]])
            elif trial.state in (states.COMPLETE, states.PRUNED) and done is None:
                raise ConfigError(
                    f"study {self.study.study_name!r} has finished trial {trial.number}, but the run's "
                    f"checkpoint {path} does not include it (missing or from another study); "
                    "use a new --study-name or restore the run folder")

    def _count_finished(self) -> int:
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        return len(self.study.get_trials(deepcopy=False, states=states))

    # --- the loop ----------------------------------------------------------------------
    def run(self) -> SearchResult:
        config = self.config
        done = self._count_finished()
        with tqdm(total=config.trials, initial=min(done, config.trials), disable=not self.progress,
                  desc=f"search {config.resolved_study_name}", unit="trial", dynamic_ncols=True) as bar:
            while done < config.trials:
                self._one_trial(bar)
                done = self._count_finished()
                bar.update(1)
        self.logger.close()
        return self.result()

    def _one_trial(self, bar: tqdm) -> None:
        config, study = self.config, self.study
        number = len(study.get_trials(deepcopy=False))
        # A sampler seeded by (seed, trial number): a resumed search proposes exactly the
        # candidates an uninterrupted one would; samplers read the history from the storage.
        study.sampler = create_sampler(config.sampler, self.space, seed=config.seed * 100_003 + number)
        trial = study.ask()
        arch = self.space.suggest(trial)
        trial.set_user_attr("arch", str(arch))
        trial.set_user_attr("params", self.supernet.count_parameters(arch))

        def on_epoch(epoch: int, score: float) -> bool:
            trial.report(score, epoch)
            return trial.should_prune()

        steps = config.epochs * math.ceil(len(self.trainer.train_set) / config.batch_size)
        with tqdm(total=steps, disable=not self.progress, leave=False, position=1, unit="step",
                  desc=f"trial {trial.number}", dynamic_ncols=True) as step_bar:
            result = self.trainer.train(arch, trial_index=trial.number, on_epoch=on_epoch,
                                        progress=step_bar.update)
        if result.pruned:
            self.finished[trial.number] = ("PRUNED", None)
        else:
            self.trainer.consolidate(arch, trial_index=trial.number, score=result.score)
            self.pool.add(trial.number, str(arch), result.score)
            rescores = {t: self.trainer.score(Architecture.parse(self.pool.entries[t].arch))
                        for t in self.pool.members() if t != trial.number}
            rescores[trial.number] = result.score
            self.pool.record(trial.number, rescores)
            self.finished[trial.number] = ("COMPLETE", result.score)
        # The trial's own attributes go in before the checkpoint, so a trial that is checkpointed
        # but not yet told (an interruption in between) still carries them when resumed.
        self._annotate(trial, result)
        self._checkpoint()
        summary = self._log_study(trial.number, result)
        if result.pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, result.score)
        bar.set_postfix(best=f"{max((v for s, v in self.finished.values() if v is not None), default=0):.3f}",
                        retained=f"{summary['retained_mean']:.3f}", forget=f"{summary['forgetting_mean']:+.3f}")

    def _checkpoint(self) -> None:
        save_checkpoint(self.run_dir / CHECKPOINT, {
            "supernet": self.supernet.state_dict(),
            "strategy": self.strategy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "pool": self.pool.state_dict(),
            "finished": dict(self.finished),
            "rng": capture_rng(),
        })

    def _annotate(self, trial: optuna.Trial, result: TrainResult) -> None:
        """The trial's user attributes (what optuna-dashboard shows per trial)."""
        trial.set_user_attr("score_at_training", result.score)
        trial.set_user_attr("rescore", result.score)
        trial.set_user_attr("train_loss", result.loss)
        trial.set_user_attr("seconds", round(result.seconds, 3))
        if self.strategy.penalty_tag:
            trial.set_user_attr("penalty", result.penalty)
        trial.set_user_attr("retained", {str(t): self.pool.entries[t].latest for t in self.pool.members()})

    def _log_study(self, number: int, result: TrainResult) -> dict[str, float]:
        """Study-level attributes and TensorBoard; returns the pool summary."""
        summary = self.pool.summary()
        # Finished Optuna trials cannot change, so the latest re-score of every earlier
        # candidate is kept (and updated) on the study.
        self.study.set_user_attr("latest_rescore", {str(t): e.latest for t, e in self.pool.entries.items()})
        for key in ("retained_mean", "forgetting_mean", "forgetting_max"):
            self.study.set_user_attr(key, summary[key])
        self.logger.log_trial(number, result, penalty_tag=self.strategy.penalty_tag)
        self.logger.log_pool(number, self.pool)
        return summary

    def result(self) -> SearchResult:
        complete = [t for t in self.study.get_trials(deepcopy=False)
                    if t.state == optuna.trial.TrialState.COMPLETE]
        best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None
        return SearchResult(
            study=self.study,
            best_arch=Architecture.parse(best.user_attrs["arch"]) if best else None,
            best_score=float(best.value) if best and best.value is not None else float("nan"),
            run_dir=self.run_dir,
            pool=self.pool.summary(),
            storage=self.config.resolved_storage,
        )


def run_search(config: SearchConfig | None = None, *, progress: bool = True,
               command: Sequence[str] | None = None, **overrides: Any) -> SearchResult:
    """Run (or resume) a search and return its result.

    Re-running with the same config resumes: the study from its storage, and the supernet,
    strategy, optimiser, retained pool and RNG states from the run's checkpoint; at most the
    trial in flight is lost. ``trials`` is the study's *total*, so a larger value extends it.

    Args:
        config: The search configuration (defaults: a small MNIST-1D search with WPL).
        progress: Show a progress bar.
        command: The command line to record in the run folder's ``config.yaml``.
        **overrides: Fields of ``config`` to replace, e.g. ``trials=5`` or ``wpl={"alpha": 10}``.

    Raises:
        ConfigError: any invalid value or name, before anything is written.
    """
    config = config or SearchConfig()
    if overrides:
        config = config.replace(**overrides)
    return _Search(config, progress=progress, command=command if command is not None else sys.argv).run()
