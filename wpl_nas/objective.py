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
   flight are marked ``FAIL`` (and their candidates enqueued to be trained again), and the run
   folder's ``config.yaml`` is written (or the options changed on resume added to its history);
2. the candidate is suggested (one categorical per edge), its cell drawn and attached to the
   trial as an artifact, and it is trained on the shared weights, its score reported after each
   epoch (``optuna.TrialPruned`` is raised when the pruner says so). Its data order (and any
   seed or schedule of the strategy) derives from its *position*: the number of trials finished
   before it (:attr:`SupernetObjective.position`, also its user attribute ``position``), not
   from its trial number, so a trial lost in flight does not shift the candidates after it;
3. the strategy consolidates it; its user attributes are set; it joins the retained pool (when
   complete) and every other pool member is re-scored (after every ``rescore_every``-th finished
   trial and the last: :meth:`SupernetObjective.rescores_after`); the checkpoint is written
   atomically, once; the score is returned.

Callbacks run after the study has recorded the trial; each is optional and only publishes or
measures (none of them writes the checkpoint):
:meth:`~SupernetObjective.retention_callback` records the pool's re-scores in the study and the
run folder, :meth:`~SupernetObjective.anatomy_callback` measures where the pool forgets,
:meth:`~SupernetObjective.tensorboard_callback` writes TensorBoard events (attach it last, so it
sees what the others recorded).

The objective is a thin Optuna adapter: the run folder's files belong to
:class:`~wpl_nas.run_folder.RunFolder`, the supernet, strategy, optimiser and trainer are built by
:func:`~wpl_nas.assembly.assemble`.
"""

from __future__ import annotations

import math
import tempfile
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.study import StudyDirection
from optuna.trial import TrialState
from tqdm.auto import tqdm

from wpl_nas.assembly import Assembly, assemble, build_supernet, check_supernet_size, resolve_device
from wpl_nas.callbacks import AnatomyCallback, RetentionCallback, TensorBoardCallback
from wpl_nas.config import OBJECTIVES, SearchConfig, resume_changes
from wpl_nas.data import DATASETS, DataBundle, Statistics, load_dataset
from wpl_nas.distributed import World, state_checksum
from wpl_nas.errors import ConfigError, TrainingDiverged, reason
from wpl_nas.evaluation import RESCORES_ATTR, RetainedPool
from wpl_nas.evaluation.cost import count_flops, measure_latency
from wpl_nas.run_folder import ARTIFACTS, RunFolder
from wpl_nas.spaces import Architecture, SearchSpace, load_space
from wpl_nas.strategies import resolve_strategy
from wpl_nas.threads import use_threads
from wpl_nas.tracking import capture_rng, restore_rng
from wpl_nas.tracking.figures import cell_png
from wpl_nas.tracking.signals import deferred
from wpl_nas.training import CandidateTrainer, TrainResult

__all__ = ["RETRY_ATTR", "RUN_ID_ATTR", "SupernetObjective", "search_parts"]

#: The study user attribute that ties a study to its run's checkpoint (a random id made when the
#: study's first trial is checkpointed), so another run's checkpoint or study.db is recognised.
RUN_ID_ATTR = "wpl_nas_run_id"
#: The user attribute of a trial enqueued to train again the candidate of a trial lost in flight
#: (its value: the lost trial's number).
RETRY_ATTR = "retry_of"


def search_parts(config: SearchConfig, space: SearchSpace, *, device: torch.device, world: World | None = None,
                 statistics: Statistics | None = None) -> tuple[DataBundle, Assembly, CandidateTrainer]:
    """The data, the assembled supernet, strategy and optimiser, and the trainer of a search with
    ``config`` (validated) on ``space``: what every rank of a data-parallel search builds alike.
    ``statistics``: the data statistics the run recorded (``RunFolder.statistics``), or None.

    Raises:
        ConfigError: the data set cannot be loaded, or the supernet would be too large.
    """
    data = load_dataset(config.dataset, data_dir=config.data_dir, download=config.download,
                        val_fraction=config.val_fraction, seed=config.seed, train_samples=config.train_samples,
                        image_size=config.image_size, statistics=statistics)
    check_supernet_size(space, data)  # a search builds its supernet once: check it here
    parts = assemble(build_supernet(space, data, seed=config.seed), config, device=device,
                     strategy=config.strategy, strategy_options=config)
    trainer = parts.trainer_for(data, epochs=config.epochs, steps=config.steps, seed=config.seed,
                                eval_samples=config.eval_samples, world=world)
    return data, parts, trainer


class SupernetObjective:
    """An Optuna objective ``(trial) -> score`` that owns one supernet, its strategy and its data.

    Every trial trains one candidate on the *shared* weights, so trials must run one at a time:
    ``study.optimize(objective, n_jobs=2)`` (or any concurrent call) is refused with an
    explanation. The objective checkpoints itself into ``run_dir`` after every trial; a new
    objective on the same ``run_dir`` restores the supernet, strategy, optimiser, retained pool and
    RNG states, so a second ``study.optimize`` on the reopened study continues where the first
    stopped. On an existing run folder only the options of ``SearchConfig.may_change_on_resume()`` may
    differ from its ``config.yaml`` (e.g. ``lr`` for the candidates still to come); each change is
    recorded there by :meth:`reconcile`. Any other difference is refused.

    Args:
        config: The options (defaults: :class:`SearchConfig`'s); ``sampler``, ``pruner``,
            ``trials`` and ``storage`` are the caller's business and only recorded.
        run_dir: Where the checkpoint, ``config.yaml`` and TensorBoard events go
            [default: ``config.run_dir``, i.e. ``<runs_dir>/<study name>``].
        progress: Show a per-step progress bar while a candidate trains.
        command: The command line to record in ``config.yaml``.
        world: The processes of a data-parallel search (:mod:`wpl_nas.distributed`), of which this
            one must be rank 0: it tells the others (:func:`wpl_nas.api.follow_search`) each
            candidate to train and each pruning decision. :func:`wpl_nas.run_search` sets it and
            first sends them the options and states [default: this process alone].
        **overrides: Fields of ``config`` to replace, e.g. ``space="nb201"``, ``strategy="ewc"``,
            ``wpl={"alpha": 300}``.

    Raises:
        ConfigError: an invalid option or name, or a run folder holding another configuration;
            raised before anything is written.
    """

    def __init__(self, config: SearchConfig | None = None, *, run_dir: str | Path | None = None,
                 progress: bool = False, command: Sequence[str] | None = None, world: World | None = None,
                 **overrides: Any) -> None:
        config = config or SearchConfig()
        if overrides:
            config = config.replace(**overrides)
        # Every name and value is checked before the run folder is touched.
        self.config = config.validate()
        self.space = load_space(config.space)
        DATASETS.get(config.dataset)
        resolve_strategy(config.strategy)
        self.device = resolve_device(config.device)
        use_threads(config.threads)
        self.folder = RunFolder(run_dir if run_dir is not None else config.run_dir)
        #: Options that differ from the run folder's config.yaml: ``{name: [old, new]}`` (see
        #: ``SearchConfig.may_change_on_resume()``); recorded in its history by :meth:`reconcile`.
        self.changes: dict[str, list[Any]] = (
            resume_changes(self.folder.config(), config, run_dir=self.folder.path) if self.folder.is_run() else {})
        self.world = world or World()
        self.data, parts, self.trainer = search_parts(config, self.space, device=self.device, world=self.world,
                                                      statistics=self.folder.statistics())
        self.supernet, self.strategy, self.optimizer = parts.supernet, parts.strategy, parts.optimizer
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
        self._unusable: str | None = None  # why this objective's in-memory supernet is unusable
        #: Which study the checkpoint belongs to: its name, its run id (RUN_ID_ATTR) and the seed.
        self._identity: dict[str, Any] = {}
        self._restore()
        # Everything is valid: the folder may exist now (e.g. for an SQLite study file inside it).
        self.folder.create()

    # --- the run folder ------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return self.folder.path

    @property
    def checkpoint_path(self) -> Path:
        return self.folder.checkpoint_path

    def _restore(self) -> None:
        state = self.folder.load_checkpoint(map_location=self.device)
        if state is None:
            return
        identity = state.get("identity", {})
        if identity.get("seed", self.config.seed) != self.config.seed:
            raise ConfigError(f"checkpoint {self.checkpoint_path} was written by a search with seed "
                              f"{identity['seed']!r}, not {self.config.seed}: it belongs to another run; restore this "
                              "run's checkpoint or use a new --study-name")
        try:
            self.supernet.load_state_dict(state["supernet"])
            self.strategy.load_state_dict(state["strategy"])
            self.optimizer.load_state_dict(state["optimizer"])
            # load_state_dict puts the saved hyper-parameters back; those of this config rule the
            # candidates still to come (they may change on resume: SearchConfig.may_change_on_resume()).
            for group in self.optimizer.param_groups:
                group.update(lr=self.config.lr, momentum=self.config.momentum,
                             weight_decay=self.config.weight_decay)
            self.pool.load_state_dict(state["pool"])
            self.trainer.load_state_dict(state.get("trainer", {}))  # absent from checkpoints before fp16's scaler
            # In place: the callbacks hold this dict.
            self.finished.update({int(k): (str(v[0]), v[1]) for k, v in state["finished"].items()})
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
            raise ConfigError(f"checkpoint {self.checkpoint_path} does not fit this run ({reason(exc, whole=True)}): "
                              "it was written for another space, strategy or data set, or it is damaged; restore "
                              "this run's checkpoint or use a new --study-name") from None
        restore_rng(state["rng"])
        self._identity = identity

    @property
    def position(self) -> int:
        """The position of the next candidate in the search: how many trials (complete or pruned)
        this supernet has been trained with. It seeds the candidate's data order and is what
        strategies see as ``trial_index``; ``wpl-nas search`` seeds the sampler with it too."""
        return len(self.finished)

    def state_dict(self) -> dict[str, Any]:
        """What the checkpoint holds: supernet, strategy, optimiser, pool, finished trials, RNG states,
        the identity of the study it belongs to, and the trainer's state (fp16's gradient scaler)."""
        return {"supernet": self.supernet.state_dict(), "strategy": self.strategy.state_dict(),
                "optimizer": self.optimizer.state_dict(), "pool": self.pool.state_dict(),
                "finished": dict(self.finished), "rng": capture_rng(), "identity": self._identity,
                "trainer": self.trainer.state_dict()}

    def save(self) -> None:
        """Write the checkpoint atomically (:meth:`state_dict`). A signal (Ctrl-C, SIGTERM) during a
        search waits until the write is done."""
        self.folder.save_checkpoint(self.state_dict())

    def lock(self) -> None:
        """Take the run folder's write lock (idempotent; :meth:`reconcile` takes it too).

        Raises:
            RunLocked: another process is searching this run folder.
        """
        self.folder.lock()

    def close(self) -> None:
        """Release the run folder's write lock (the end of the process releases it too)."""
        self.folder.unlock()

    def reconcile(self, study: optuna.Study, *, running: int | None = None) -> None:
        """Take the run folder's write lock, bring ``study`` and the checkpoint into agreement,
        then record the config.

        A trial the checkpoint holds but the study still shows as running (the process stopped
        between the two) is told its result; any other running trial (but ``running``, the one
        being trained now) was lost in flight and is marked ``FAIL``, and its candidate is enqueued
        to be trained again (:meth:`mark_lost`). Then ``config.yaml`` is written, or, when options
        changed since it was (``SearchConfig.may_change_on_resume()``), rewritten with the options in
        force and one more ``history`` entry. The first ``objective(trial)`` calls this; call it
        yourself to do it before asking for a trial.

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
            if trial.state in (TrialState.COMPLETE, TrialState.PRUNED) and trial.number not in self.finished:
                raise ConfigError(
                    f"study {study.study_name!r} has finished trial {trial.number}, but the run's "
                    f"checkpoint {self.checkpoint_path} does not include it (missing or from another study); "
                    "use a new --study-name or restore the run folder")
        for trial in trials:
            if trial.state == TrialState.RUNNING and trial.number != running:
                with deferred():  # a signal now must not leave the trial half settled
                    if trial.number in self.finished:
                        self.tell_checkpointed(study, trial.number)
                    else:
                        self.mark_lost(study, trial.number)
        self._pool_catch_up(study)
        self.folder.record_config(self.config, study=study.study_name, command=self.command, position=self.position)
        self.folder.record_statistics(self.config.dataset, self.data.statistics)
        self._reconciled = study.study_name

    def tell_checkpointed(self, study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
        """Tell ``study`` the result the checkpoint holds for trial ``number`` (a trial finished and
        checkpointed, but not yet told when its process stopped)."""
        state, value = self.finished[number]
        return study.tell(number, value if state == "COMPLETE" else None, state=TrialState[state])

    def mark_lost(self, study: optuna.Study, number: int) -> None:
        """Mark running trial ``number`` ``FAIL`` (lost in flight, interrupted, or diverged: the
        checkpoint does not hold it) and enqueue its candidate, when it had been suggested, to be
        trained again by the next trial (user attribute ``retry_of``): with the same position, so
        with the same data order, as an uninterrupted search would have trained it."""
        frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
        study.tell(number, state=TrialState.FAIL)
        # A grid sampler counts a failed trial as visited, so re-proposing it is left to the queue;
        # a candidate whose suggestion was cut short is proposed again by the position-seeded sampler.
        if set(frozen.params) == set(self.space.choices):
            study.enqueue_trial(dict(frozen.params), user_attrs={RETRY_ATTR: number})

    def _pool_catch_up(self, study: optuna.Study) -> None:
        """Bring the pool up to the last finished trial if the checkpoint's pool is a trial behind:
        runs made before the pool was re-scored inside the trial (wpl-nas 0.1) saved it after the
        study was told, so a stop in between left the last trial out. Nothing changes otherwise. (Between
        two re-scores, ``rescore_every`` > 1, the trial's own join is what is caught up: a pruned trial
        there records nothing.)"""
        last = max(self.finished, default=None)
        if last is None or self.pool.recorded(last):
            return
        frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == last)
        complete = self.finished[last][0] == "COMPLETE"
        if not (complete or self.pool.entries):
            return  # a pruned trial and an empty pool: nothing to re-score
        rescore = self.rescores_after(len(self.finished) - 1)
        if not (complete or rescore):
            return  # a pruned trial between two re-scores records nothing
        self._update_pool(last, frozen.user_attrs["arch"] if complete else None,
                          frozen.user_attrs.get("score_at_training", math.nan), rescore=rescore)
        self.save()

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
                an earlier trial diverged or was interrupted part way (its weights in memory are
                neither the checkpoint's nor a finished candidate's).
        """
        if self._unusable is not None:
            raise RuntimeError(f"{self._unusable}; this SupernetObjective's supernet is no longer usable: create a "
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
        position = self.position
        arch = self.space.suggest(trial)
        trial.set_user_attr("arch", str(arch))
        trial.set_user_attr("params", self.supernet.count_parameters(arch))
        trial.set_user_attr("position", position)
        with deferred():  # a copy cut short would leave a partial artifact file
            self._upload_cell(trial, arch)
        costs = self._costs(trial, arch)
        single = len(self.objectives) == 1

        def on_epoch(epoch: int, score: float) -> bool:
            if not single:  # Optuna reports and prunes single-objective trials only
                return self.world.share(False)
            trial.report(score, epoch)
            return self.world.share(trial.should_prune())  # the other ranks stop with this one

        if self.world.distributed:  # the other ranks train the same candidate; the checksum checks they can
            self.world.share((str(arch), position, trial.number, state_checksum(self.supernet, self.strategy)))
        try:
            with tqdm(total=self.trainer.total_steps, disable=not self.progress, leave=False, position=1, unit="step",
                      desc=f"trial {trial.number}", dynamic_ncols=True) as bar:
                try:
                    result = self.trainer.train(arch, trial_index=position, on_epoch=on_epoch, progress=bar.update,
                                                name=f"trial {trial.number}")
                except TrainingDiverged as exc:
                    raise TrainingDiverged(
                        f"{exc}. The run's checkpoint still holds the supernet from before this trial, and both may "
                        "change on resume: rerun with them and this candidate is trained again") from None
            values = [result.score, *costs]
            outcome: tuple[str, float | list[float] | None] = ("PRUNED", None)
            if not result.pruned:
                self.trainer.consolidate(arch, trial_index=position, score=result.score)
                self._check_strategy_state(trial.number)
                outcome = ("COMPLETE", result.score if single else values)
            # Attributes go in before the checkpoint, so a trial that is checkpointed but not yet
            # told (an interruption in between) still carries them when it is told on resume.
            self._annotate(trial, result)
            # The pool is re-scored before the checkpoint, so trial and pool are saved together, once.
            self._update_pool(trial.number, None if result.pruned else str(arch), result.score, trial=trial,
                              rescore=self.rescores_after(position))
            with deferred():  # `finished` in memory and in the checkpoint on disk change together
                self.finished[trial.number] = outcome
                try:
                    self.save()
                except BaseException:
                    del self.finished[trial.number]
                    raise
        except TrainingDiverged as exc:
            self._unusable = f"trial {trial.number} diverged"
            raise exc from None
        except BaseException:
            if trial.number not in self.finished:  # interrupted part way: the weights are half trained
                self._unusable = f"trial {trial.number} was interrupted"
            raise
        if result.pruned:
            raise optuna.TrialPruned(f"pruned after epoch {len(result.epoch_scores) - 1} "
                                     f"at score {result.score:.4f}")
        return result.score if single else tuple(values)

    def rescores_after(self, position: int) -> bool:
        """Whether the retained pool is re-scored after the candidate at ``position`` (the number of
        trials finished before it): after every ``rescore_every``-th finished trial and after the
        ``trials``-th, the last of the search, so that its final state is always measured. It depends
        on the count of finished trials alone, so a resumed search (or any rank) decides as an
        uninterrupted one does."""
        done = position + 1
        return done % self.config.rescore_every == 0 or done >= self.config.trials

    def _update_pool(self, number: int, arch: str | None, score: float, *, trial: optuna.Trial | None = None,
                     rescore: bool = True) -> None:
        """Trial ``number`` joins the retained pool (when it completed: ``arch`` given, with its
        ``score`` at training), replacing the entry of its architecture, and, with ``rescore``, every
        other member is re-scored on the fixed evaluation set; the scores are recorded as taken after
        ``number``, and on ``trial`` (the running trial, when given) as its user attribute
        :data:`~wpl_nas.evaluation.RESCORES_ATTR`: the study's records then grow by the pool's size
        per trial, however long the search. Without ``rescore`` only the newcomer's own score is
        recorded (a join: :meth:`~wpl_nas.evaluation.RetainedPool.record`).

        In a data-parallel search, the re-scores of a trial (``trial`` given) are divided among the
        ranks (:meth:`~wpl_nas.distributed.World.divide`); those of :meth:`_pool_catch_up` are rank
        0's alone (before the others start)."""
        pool = self.pool
        if arch is not None:
            pool.add(number, arch, score)
        others = [t for t in pool.members() if t != number] if rescore else []
        archs = [pool.entries[t].arch for t in others]
        # Only after a trial do the other ranks wait for this pool (a catch-up runs before they start);
        # between re-scores they are sent an empty one, so every rank follows rank 0's decision.
        world = self.world if trial is not None else World()
        if world.distributed:
            world.share(archs)
        rescores = dict(zip(others, world.divide(archs, self.score), strict=True))
        if number in pool.entries:
            rescores[number] = pool.entries[number].score
        pool.record(number, rescores, rescored=rescore)
        if trial is not None:
            trial.set_user_attr(RESCORES_ATTR, {str(t): s for t, s in rescores.items()})

    def _check_strategy_state(self, number: int) -> None:
        """Refuse to go on (and to save) once the strategy's state holds NaN or infinity: every later
        candidate would be pulled towards it, and the checkpoint must keep the last good state."""
        bad = [name for name, value in self.strategy.state_dict().items()
               if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()]
        if bad:
            raise TrainingDiverged(
                f"consolidating trial {number} made the {self.config.strategy} strategy's state NaN or infinite "
                f"({', '.join(bad[:4])}); its options are too extreme for this run. The checkpoint still holds the "
                "state from before this trial; start a new --study-name with saner strategy options")

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
            path.write_bytes(cell_png(self.space, arch))  # legible at the size it is shown
            upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial, mimetype="image/png")

    def _annotate(self, trial: optuna.Trial, result: TrainResult) -> None:
        """The trial's user attributes (what optuna-dashboard shows per trial)."""
        trial.set_user_attr("score_at_training", result.score)
        trial.set_user_attr("train_loss", result.loss)
        trial.set_user_attr("seconds", round(result.seconds, 3))
        if self.strategy.penalty_tag:
            trial.set_user_attr("penalty", result.penalty)

    # --- callbacks --------------------------------------------------------------------
    @property
    def chance(self) -> float | None:
        """The chance score (1/classes) when higher is better; None for perplexity, which has no
        floor worth normalising by."""
        return 1.0 / self.data.num_classes if self.trainer.metric.higher_is_better else None

    def retention_callback(self) -> RetentionCallback:
        """A study callback that records the retained pool's re-scores after each trial (see
        :class:`~wpl_nas.callbacks.RetentionCallback`)."""
        return RetentionCallback(self.pool, self.finished, self.folder, chance=self.chance)

    def anatomy_callback(self, *, probe_size: int = 256) -> AnatomyCallback:
        """A study callback that measures, per stage, how far the pool members' representations drift
        (see :class:`~wpl_nas.callbacks.AnatomyCallback`)."""
        return AnatomyCallback(self.supernet, self.pool, self.finished, self.folder,
                               probe=self.trainer.eval_x[:probe_size], device=self.device,
                               every=self.config.anatomy_every)

    def tensorboard_callback(self, log_dir: str | Path | None = None) -> TensorBoardCallback:
        """A study callback that writes TensorBoard events to ``log_dir`` [default: ``run_dir/tb``]
        (see :class:`~wpl_nas.callbacks.TensorBoardCallback`)."""
        return TensorBoardCallback(log_dir if log_dir is not None else self.folder.tensorboard_dir,
                                   penalty_tag=self.strategy.penalty_tag, space=self.space,
                                   metric=self.trainer.metric.name, figures_every=self.config.figures_every)

    def score(self, arch: Architecture | str) -> float:
        """``arch``'s score (accuracy, or perplexity) on the fixed evaluation set, with the current weights."""
        return self.trainer.score(Architecture.parse(arch) if isinstance(arch, str) else arch)
