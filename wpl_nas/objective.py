"""``SupernetObjective``: the supernet, its strategy and its data as an Optuna objective.

::

    import optuna, wpl_nas

    objective = wpl_nas.SupernetObjective(space="mnist1d", dataset="mnist1d", strategy="wpl", run_dir="runs/mine")
    study = optuna.create_study(direction="maximize", storage="sqlite:///runs/mine/study.db", load_if_exists=True)
    study.optimize(objective, n_trials=50, callbacks=[objective.retention_callback()])

The objective works with ``study.optimize`` and with ask-and-tell; ``wpl-nas search`` is built on
it. Call order for one trial (``objective(trial)``):

1. on the first call, :meth:`SupernetObjective.reconcile` with ``trial.study`` (also callable
   beforehand): trials a previous process checkpointed but never told are told, trials it lost in
   flight are marked ``FAIL``, and the run folder's ``config.yaml`` is written;
2. the candidate is suggested (one categorical per edge), its cell drawn and attached to the
   trial as an artifact, and it is trained on the shared weights, its score reported after each
   epoch (``optuna.TrialPruned`` is raised when the pruner says so);
3. the strategy consolidates it; its user attributes are set; the checkpoint is written
   atomically; the score is returned.

Callbacks run after the study has recorded the trial; each is optional:
:meth:`~SupernetObjective.retention_callback` re-scores the retained pool,
:meth:`~SupernetObjective.tensorboard_callback` writes TensorBoard events (attach it after the
retention callback so it sees the pool's new re-scores).
"""

from __future__ import annotations

import math
import tempfile
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import torch
import yaml
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.study import StudyDirection
from optuna.trial import TrialState
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from wpl_nas.config import OBJECTIVES, SearchConfig
from wpl_nas.data import DATASETS, load_dataset
from wpl_nas.errors import ConfigError, TrainingDiverged
from wpl_nas.evaluation import RetainedPool
from wpl_nas.evaluation.cost import count_flops, measure_latency
from wpl_nas.spaces import Architecture, SearchSpace, load_space
from wpl_nas.strategies import Strategy, create_strategy, resolve_strategy
from wpl_nas.supernet import Supernet
from wpl_nas.tracking import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from wpl_nas.tracking.figures import cell_figure, png_bytes
from wpl_nas.tracking.lock import RunLock
from wpl_nas.training import CandidateTrainer, TrainResult

if TYPE_CHECKING:
    from wpl_nas.callbacks import AnatomyCallback, RetentionCallback, TensorBoardCallback

__all__ = ["ARTIFACTS", "CHECKPOINT", "CONFIG_FILE", "SupernetObjective", "build_supernet", "resolve_device",
           "saved_config"]

CHECKPOINT = "checkpoints/last.pt"
_CHECKPOINT_KEYS = ("supernet", "strategy", "optimizer", "pool", "finished", "rng")
#: The study user attribute that ties a study to its run's checkpoint (a random id made when the
#: study's first trial is checkpointed), so another run's checkpoint or study.db is recognised.
RUN_ID_ATTR = "wpl_nas_run_id"
CONFIG_FILE = "config.yaml"
#: Optuna artifacts of the run (each trial's cell image), served by ``wpl-nas dashboard``.
ARTIFACTS = "artifacts"


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


def build_supernet(space: SearchSpace | str, data: Any, *, seed: int = 0) -> Supernet:
    """A freshly initialised supernet of ``space`` (a space or its name / path) for ``data`` (a DataBundle).

    Raises:
        ConfigError: the space's dimensionality does not fit the data.
    """
    space = load_space(space) if isinstance(space, str) else space
    space.check_data(data.name, tuple(data.input_shape))
    torch.manual_seed(seed)
    return Supernet(space, in_channels=data.input_shape[0], num_classes=data.num_classes,
                    input_shape=tuple(data.input_shape))


def saved_config(path: Path) -> SearchConfig:
    """The :class:`SearchConfig` recorded in a run folder's ``config.yaml``."""
    data = yaml.safe_load(path.read_text()) or {}
    data.pop("command", None)
    return SearchConfig.from_dict(data, where=str(path))


def _check_resumable(saved_path: Path, config: SearchConfig) -> None:
    # Compared with ``auto`` resolved: a run saved with sampler 'tpe' before 'auto' existed resumes.
    saved_cfg = saved_config(saved_path)
    saved = {**saved_cfg.to_dict(), "sampler": saved_cfg.resolved_sampler}
    new = {**config.to_dict(), "sampler": config.resolved_sampler}
    changed = [k for k in new if k not in SearchConfig.RESUMABLE_CHANGES and saved.get(k) != new[k]]
    if changed:
        diffs = "; ".join(f"{k}: saved {saved.get(k)!r}, now {new[k]!r}" for k in changed)
        raise ConfigError(
            f"run folder {saved_path.parent} holds a study with a different configuration ({diffs}). "
            f"Only {', '.join(SearchConfig.RESUMABLE_CHANGES)} may change when resuming; "
            "pass a new --study-name to start another study"
        )


class SupernetObjective:
    """An Optuna objective ``(trial) -> score`` that owns one supernet, its strategy and its data.

    Every trial trains one candidate on the *shared* weights, so trials must run one at a time:
    ``study.optimize(objective, n_jobs=2)`` (or any concurrent call) is refused with an
    explanation. The objective checkpoints itself into ``run_dir`` after every trial; a new
    objective on the same ``run_dir`` restores the supernet, strategy, optimiser, retained pool and
    RNG states, so a second ``study.optimize`` on the reopened study continues where the first
    stopped. Changing anything but ``device``/``threads`` (and the study-level ``trials``/``storage``)
    on an existing run folder is refused.

    Args:
        config: The options (defaults: :class:`SearchConfig`'s); ``sampler``, ``pruner``,
            ``trials`` and ``storage`` are the caller's business and only recorded.
        run_dir: Where the checkpoint, ``config.yaml`` and TensorBoard events go
            [default: ``config.run_dir``, i.e. ``<runs_dir>/<study name>``].
        progress: Show a per-step progress bar while a candidate trains.
        command: The command line to record in ``config.yaml``.
        **overrides: Fields of ``config`` to replace, e.g. ``space="nb201"``, ``strategy="ewc"``,
            ``wpl={"alpha": 300}``.

    Raises:
        ConfigError: an invalid option or name, or a run folder holding another configuration;
            raised before anything is written.
    """

    def __init__(self, config: SearchConfig | None = None, *, run_dir: str | Path | None = None,
                 progress: bool = False, command: Sequence[str] | None = None, **overrides: Any) -> None:
        config = config or SearchConfig()
        if overrides:
            config = config.replace(**overrides)
        # Every name and value is checked before the run folder is touched.
        self.config = config.validate()
        self.space = load_space(config.space)
        DATASETS.get(config.dataset)
        resolve_strategy(config.strategy)
        self.device = resolve_device(config.device)
        if config.threads:
            torch.set_num_threads(config.threads)
        self.run_dir = Path(run_dir) if run_dir is not None else config.run_dir
        if (self.run_dir / CONFIG_FILE).is_file():
            _check_resumable(self.run_dir / CONFIG_FILE, config)
        self.data = load_dataset(config.dataset, data_dir=config.data_dir, download=config.download,
                                 val_fraction=config.val_fraction, seed=config.seed)
        self.supernet = build_supernet(self.space, self.data, seed=config.seed).to(self.device)
        self.strategy: Strategy = create_strategy(config.strategy, self.supernet, config).to(self.device)
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
            grad_clip=config.grad_clip, eval_batch_size=config.eval_batch_size, seed=config.seed,
            metric=self.data.metric)
        self.objectives = config.objective_list
        self.pool = RetainedPool(best=config.pool_best, recent=config.pool_recent,
                                 higher_is_better=self.trainer.metric.higher_is_better)
        #: Trials whose training is folded into the supernet state: number -> (state name, value or
        #: values, as told to the study).
        self.finished: dict[int, tuple[str, float | list[float] | None]] = {}
        self.progress = progress
        self.command = list(command) if command is not None else None
        self._reconciled: str | None = None  # name of the study reconciled with the checkpoint
        self._busy = threading.Lock()
        self._diverged: str | None = None  # why this objective's in-memory supernet is unusable
        #: Which study the checkpoint belongs to: its name, its run id (RUN_ID_ATTR) and the seed.
        self._identity: dict[str, Any] = {}
        self._lock = RunLock(self.run_dir)
        self._restore()
        # Everything is valid: the folder may exist now (e.g. for an SQLite study file inside it).
        self.run_dir.mkdir(parents=True, exist_ok=True)

    # --- the run folder ------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    def _restore(self) -> None:
        if not self.checkpoint_path.is_file():
            return
        state = load_checkpoint(self.checkpoint_path, map_location=self.device, required=_CHECKPOINT_KEYS)
        identity = state.get("identity", {})
        if identity.get("seed", self.config.seed) != self.config.seed:
            raise ConfigError(f"checkpoint {self.checkpoint_path} was written by a search with seed "
                              f"{identity['seed']!r}, not {self.config.seed}: it belongs to another run; restore this "
                              "run's checkpoint or use a new --study-name")
        try:
            self.supernet.load_state_dict(state["supernet"])
            self.strategy.load_state_dict(state["strategy"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.pool.load_state_dict(state["pool"])
            self.finished = {int(k): (str(v[0]), v[1]) for k, v in state["finished"].items()}
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"checkpoint {self.checkpoint_path} does not fit this run ({reason}): it was written "
                              "for another space, strategy or data set, or it is damaged; restore this run's "
                              "checkpoint or use a new --study-name") from None
        restore_rng(state["rng"])
        self._identity = identity

    def save(self) -> None:
        """Write the checkpoint atomically: supernet, strategy, optimiser, pool, finished trials, RNG,
        and the identity of the study it belongs to."""
        save_checkpoint(self.checkpoint_path, {
            "supernet": self.supernet.state_dict(),
            "strategy": self.strategy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "pool": self.pool.state_dict(),
            "finished": dict(self.finished),
            "rng": capture_rng(),
            "identity": self._identity,
        })

    def lock(self) -> None:
        """Take the run folder's write lock (idempotent; :meth:`reconcile` takes it too).

        Raises:
            RunLocked: another process is searching this run folder.
        """
        self._lock.acquire()

    def close(self) -> None:
        """Release the run folder's write lock (the end of the process releases it too)."""
        self._lock.release()

    def reconcile(self, study: optuna.Study, *, running: int | None = None) -> None:
        """Take the run folder's write lock, bring ``study`` and the checkpoint into agreement,
        then record the config.

        A trial the checkpoint holds but the study still shows as running (the process stopped
        between the two) is told its result; any other running trial (but ``running``, the one
        being trained now) was lost in flight and is marked ``FAIL``. The first ``objective(trial)``
        calls this; call it yourself to do it before asking for a trial.

        Raises:
            RunLocked: another process is searching this run folder (the message names it).
            ConfigError: the study and the checkpoint disagree about what has finished (a
                checkpoint from another study, or a study whose checkpoint is missing).
        """
        self.lock()
        self._check_identity(study)
        trials = study.get_trials(deepcopy=False)
        stray = sorted(set(self.finished) - {t.number for t in trials})
        if stray or running in self.finished:
            raise ConfigError(
                f"the checkpoint {self.checkpoint_path} holds trials {stray or [running]} that study "
                f"{study.study_name!r} has not finished (a checkpoint of another study?); use another run "
                "folder or restore the study")
        for trial in trials:
            done = self.finished.get(trial.number)
            if trial.state == TrialState.RUNNING and trial.number != running:
                if done is None:
                    study.tell(trial.number, state=TrialState.FAIL)
                else:
                    state, value = done
                    study.tell(trial.number, value if state == "COMPLETE" else None, state=TrialState[state])
            elif trial.state in (TrialState.COMPLETE, TrialState.PRUNED) and done is None:
                raise ConfigError(
                    f"study {study.study_name!r} has finished trial {trial.number}, but the run's "
                    f"checkpoint {self.checkpoint_path} does not include it (missing or from another study); "
                    "use a new --study-name or restore the run folder")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not (self.run_dir / CONFIG_FILE).is_file():
            self.config.dump(self.run_dir / CONFIG_FILE, extra={"command": self.command})
        self._reconciled = study.study_name

    def _check_identity(self, study: optuna.Study) -> None:
        """Refuse a study and checkpoint that belong to different runs; tie them together if new."""
        run_id = study.user_attrs.get(RUN_ID_ATTR)
        saved = self._identity
        if saved:
            if saved.get("run_id") != run_id or saved.get("study") != study.study_name:
                raise ConfigError(
                    f"checkpoint {self.checkpoint_path} belongs to study {saved.get('study')!r} (run id "
                    f"{saved.get('run_id')}), but the study is {study.study_name!r} (run id {run_id}): a checkpoint "
                    "or study.db of another run was put in this run folder; restore the matching pair or use a "
                    "new --study-name")
            return
        if run_id is not None and self.finished:
            raise ConfigError(f"checkpoint {self.checkpoint_path} does not record which study it belongs to; "
                              f"study {study.study_name!r} is run {run_id}: restore this run's checkpoint")
        if run_id is None:
            run_id = uuid.uuid4().hex
            study.set_user_attr(RUN_ID_ATTR, run_id)
        self._identity = {"study": study.study_name, "run_id": run_id, "seed": self.config.seed}

    # --- one trial ---------------------------------------------------------------------
    @property
    def directions(self) -> list[StudyDirection]:
        """The study directions of :attr:`objectives`: the score's (maximise accuracy, minimise
        perplexity), then minimise each cost."""
        directions = [self.trainer.metric.direction, *(OBJECTIVES[o] for o in self.objectives[1:])]
        return [StudyDirection.MAXIMIZE if d == "maximize" else StudyDirection.MINIMIZE for d in directions]

    @property
    def metric_names(self) -> list[str]:
        """The objectives' names as the dashboard shows them (the first is the data's score)."""
        return [self.trainer.metric.name, *self.objectives[1:]]

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        """Train the candidate ``trial`` suggests; return its validation score, followed by its costs
        when there are several objectives (see the module docstring).

        Raises:
            optuna.TrialPruned: the study's pruner stopped the candidate after an epoch.
            TrainingDiverged: the candidate's training loss became NaN or infinite; the checkpoint
                is left as it was after the previous trial, and this objective refuses further
                trials (build a new one on the run folder to go on from the checkpoint).
            RuntimeError: another trial is being trained by this objective at the same time, or
                an earlier trial diverged.
        """
        if self._diverged is not None:
            raise RuntimeError(f"{self._diverged}; this SupernetObjective's supernet is no longer usable: create a "
                               f"new one on {self.run_dir} to continue from its checkpoint")
        if not self._busy.acquire(blocking=False):
            raise RuntimeError(
                "SupernetObjective trains every trial on one shared supernet, so trials cannot run "
                "concurrently: use study.optimize(..., n_jobs=1) (the default)")
        try:
            if self._reconciled != trial.study.study_name:
                self.reconcile(trial.study, running=trial.number)
            return self._run(trial)
        finally:
            self._busy.release()

    def _run(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        config = self.config
        arch = self.space.suggest(trial)
        trial.set_user_attr("arch", str(arch))
        trial.set_user_attr("params", self.supernet.count_parameters(arch))
        self._upload_cell(trial, arch)
        costs = self._costs(trial, arch)
        single = len(self.objectives) == 1

        def on_epoch(epoch: int, score: float) -> bool:
            if not single:  # Optuna reports and prunes single-objective trials only
                return False
            trial.report(score, epoch)
            return trial.should_prune()

        steps = config.epochs * math.ceil(len(self.trainer.train_set) / config.batch_size)
        with tqdm(total=steps, disable=not self.progress, leave=False, position=1, unit="step",
                  desc=f"trial {trial.number}", dynamic_ncols=True) as bar:
            try:
                result = self.trainer.train(arch, trial_index=trial.number, on_epoch=on_epoch, progress=bar.update)
            except TrainingDiverged as exc:
                self._diverged = f"trial {trial.number} diverged"
                raise exc from None
        values = [result.score, *costs]
        if result.pruned:
            self.finished[trial.number] = ("PRUNED", None)
        else:
            self.trainer.consolidate(arch, trial_index=trial.number, score=result.score)
            self.finished[trial.number] = ("COMPLETE", result.score if single else values)
        # Attributes go in before the checkpoint, so a trial that is checkpointed but not yet
        # told (an interruption in between) still carries them when it is told on resume.
        self._annotate(trial, result)
        self.save()
        if result.pruned:
            raise optuna.TrialPruned(f"pruned after epoch {len(result.epoch_scores) - 1} "
                                     f"at score {result.score:.4f}")
        return result.score if single else tuple(values)

    def _costs(self, trial: optuna.Trial, arch: Architecture) -> list[float]:
        """The candidate's cost objectives (params, flops, latency in ms), also set as user attributes."""
        shape = tuple(self.data.input_shape)
        values = []
        for name in self.objectives[1:]:
            if name == "params":
                value = float(self.supernet.count_parameters(arch))
            elif name == "flops":
                value = float(count_flops(self.supernet, arch, shape))
            else:
                value = measure_latency(self.supernet, arch, shape, device=self.device)
            trial.set_user_attr({"latency": "latency_ms"}.get(name, name), value)
            values.append(value)
        return values

    def _upload_cell(self, trial: optuna.Trial, arch: Architecture) -> None:
        """The candidate's cell drawn as a PNG, attached to the trial as an Optuna artifact (the
        dashboard shows it; the files live in ``run_dir/artifacts``)."""
        (self.run_dir / ARTIFACTS).mkdir(exist_ok=True)
        store = FileSystemArtifactStore(str(self.run_dir / ARTIFACTS))
        with tempfile.TemporaryDirectory(dir=self.run_dir) as tmp:
            path = Path(tmp) / f"cell_trial_{trial.number:04d}.png"
            path.write_bytes(png_bytes(cell_figure(self.space, arch)))
            upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial, mimetype="image/png")

    def _annotate(self, trial: optuna.Trial, result: TrainResult) -> None:
        """The trial's user attributes (what optuna-dashboard shows per trial)."""
        trial.set_user_attr("score_at_training", result.score)
        trial.set_user_attr("train_loss", result.loss)
        trial.set_user_attr("seconds", round(result.seconds, 3))
        if self.strategy.penalty_tag:
            trial.set_user_attr("penalty", result.penalty)

    # --- callbacks --------------------------------------------------------------------
    def retention_callback(self) -> RetentionCallback:
        """A study callback that re-scores the retained pool after each trial (see
        :class:`~wpl_nas.callbacks.RetentionCallback`)."""
        from wpl_nas.callbacks import RetentionCallback

        return RetentionCallback(self)

    def anatomy_callback(self, *, probe_size: int = 256) -> AnatomyCallback:
        """A study callback that measures, per stage, how far the pool members' representations drift
        (see :class:`~wpl_nas.callbacks.AnatomyCallback`); attach it after the retention callback."""
        from wpl_nas.callbacks import AnatomyCallback

        return AnatomyCallback(self, probe_size=probe_size)

    def tensorboard_callback(self, log_dir: str | Path | None = None) -> TensorBoardCallback:
        """A study callback that writes TensorBoard events to ``log_dir`` [default: ``run_dir/tb``]
        (see :class:`~wpl_nas.callbacks.TensorBoardCallback`)."""
        from wpl_nas.callbacks import TensorBoardCallback

        return TensorBoardCallback(log_dir if log_dir is not None else self.run_dir / "tb",
                                   penalty_tag=self.strategy.penalty_tag, space=self.space,
                                   metric=self.trainer.metric.name)

    def score(self, arch: Architecture | str) -> float:
        """``arch``'s score (accuracy, or perplexity) on the fixed evaluation set, with the current weights."""
        return self.trainer.score(Architecture.parse(arch) if isinstance(arch, str) else arch)
