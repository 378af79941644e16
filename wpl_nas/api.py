"""The programmatic entry points; the CLI only translates flags into these calls.

::

    import wpl_nas
    result = wpl_nas.run_search(wpl_nas.SearchConfig(trials=10))
    print(result.best_arch, result.best_score, result.run_dir)
"""

from __future__ import annotations

import contextlib
import io
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
import torch
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from wpl_nas.assembly import resolve_device
from wpl_nas.config import SearchConfig
from wpl_nas.distributed import World, leave, state_checksum
from wpl_nas.errors import ConfigError, reason
from wpl_nas.objective import SupernetObjective, search_parts
from wpl_nas.run_folder import LOCK_FILE, TENSORBOARD_DIR
from wpl_nas.selection import FinalScores, best_at_training, final_note, latest_finished, load_final, rescore_final
from wpl_nas.spaces import Architecture, load_space
from wpl_nas.storage import check_storage_url, journal_path, mask_storage, open_storage, scrub, sqlite_write_ahead
from wpl_nas.study import PRUNERS, SAMPLERS, create_pruner, create_sampler
from wpl_nas.threads import use_threads
from wpl_nas.tracking.signals import SearchInterrupted, deferred, interrupts_handled

#: The study user attribute naming the last trial whose after-trial work (re-scores, anatomy,
#: TensorBoard) is complete.
OBSERVED_ATTR = "observed_after_trial"

__all__ = ["SearchResult", "follow_search", "run_search"]


@dataclass
class SearchResult:
    """What :func:`run_search` returns.

    Attributes:
        study: The Optuna study (one trial per candidate).
        best_arch: The best candidate (by ``choose_by``: its score on the final supernet, or at
            training), or None if no trial completed.
        best_score: Its validation score (accuracy, or perplexity for language data) by that measure.
        run_dir: The run folder (config, study database, TensorBoard events, checkpoint).
        pool: Summary of the retained pool: mean retained score, mean and max forgetting.
        storage: The study's storage as shown: its URL with the password masked (``***``), or the
            journal file.
        metric: The score's name: ``accuracy`` or ``perplexity``.
        final: Every candidate re-scored on the final supernet (:mod:`wpl_nas.selection`).
        choose_by: Which score chose ``best_arch``: ``final`` or ``training``.
    """

    study: optuna.Study
    best_arch: Architecture | None
    best_score: float
    run_dir: Path
    pool: dict[str, float]
    storage: str
    metric: str = "accuracy"
    final: FinalScores | None = None
    choose_by: str = "training"

    def summary(self) -> str:
        """The end-of-search report printed by ``wpl-nas search``."""
        p = self.pool
        storage = self.storage
        how = "on the final supernet" if self.choose_by == "final" else "at training time"
        best = (
            [f"best architecture   {self.best_arch}",
             f"best score          {self.best_score:.4f}  (validation {self.metric} {how})"]
            if self.best_arch is not None else ["best architecture   none: no trial completed (all pruned?)"]
        )
        if self.final is not None:
            m = self.final.measures()
            tau = "n/a" if m["stability_tau"] != m["stability_tau"] else f"{m['stability_tau']:+.3f}"
            best.append(f"all candidates      {len(self.final.rows)} re-scored on the final supernet: forgetting "
                        f"mean {m['forgetting_mean']:+.4f}, max {m['forgetting_max']:+.4f}; rank stability τ {tau} "
                        "(final.csv)")
        lines = [
            *best,
            f"retained pool       mean {self.metric} {p['retained_mean']:.4f}, "
            f"forgetting mean {p['forgetting_mean']:+.4f}, max {p['forgetting_max']:+.4f}, "
            "rank stability τ " + ("n/a" if p["rank_tau"] != p["rank_tau"] else f"{p['rank_tau']:+.3f}"),
            f"run folder          {self.run_dir}  (retention.csv, anatomy.jsonl, ...)",
            f"TensorBoard         tensorboard --logdir {self.run_dir / TENSORBOARD_DIR}",
            f"Optuna dashboard    wpl-nas dashboard {self.run_dir}  (storage {storage})",
            f"then                wpl-nas anatomy | rank | report {self.run_dir}",
        ]
        if len(self.study.directions) > 1:
            names = self.study.metric_names or [f"objective {i}" for i in range(len(self.study.directions))]
            sign = -1.0 if self.study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
            front = sorted(self.study.best_trials, key=lambda t: sign * t.values[0])
            lines += ["", f"Pareto front ({len(front)} trials; {', '.join(names)}):"]
            for t in front[:12]:
                values = "  ".join(f"{n} {v:,.4g}" for n, v in zip(names, t.values, strict=True))
                lines.append(f"  trial {t.number:<4d} {values}  {t.user_attrs['arch']}")
            if len(front) > 12:
                lines.append(f"  ... and {len(front) - 12} more (wpl-nas dashboard shows them all)")
        return "\n".join(lines)


class _Search:
    """One search: a study driven by ask-and-tell around a :class:`SupernetObjective` and its callbacks.

    Set-up validates everything before writing anything; the loop reseeds the sampler for each
    trial from ``(seed, position)``, the position being the number of trials finished before it,
    so that a resumed search proposes exactly what an uninterrupted one would (samplers read the
    history from the storage and pass over failed trials), even when a trial was lost in flight.

    A trial that does not finish (Ctrl-C, SIGTERM, a diverged candidate, any error) is marked
    ``FAIL`` at once and its candidate enqueued to be trained again at the same position; the
    checkpoint keeps the last finished trial's state.
    """

    def __init__(self, config: SearchConfig, *, progress: bool, command: Sequence[str] | None,
                 world: World | None = None) -> None:
        self.world = world or World()
        # The search's own names first (an unknown one is named, not refused as a change on resume)...
        PRUNERS.get(config.pruner)
        SAMPLERS.get(config.resolved_sampler)
        created = [p for p in (config.run_dir, Path(config.runs_dir)) if not p.exists()]  # innermost first
        journal = journal_path(config.resolved_storage)
        new_journal = journal is not None and not journal.exists()
        # ...then the objective checks every other option and name, and loads the space, before
        # anything is written.
        self.objective = SupernetObjective(config, progress=progress, command=command, world=self.world)
        self.config = config = self.objective.config
        self.progress = progress
        self.final: FinalScores | None = None  # set when the search ends
        self.run_dir = self.objective.run_dir
        self._journal = contextlib.ExitStack()
        try:
            sampler = create_sampler(config.resolved_sampler, self.objective.space, seed=config.seed)  # grid's limit
            check_storage_url(config.resolved_storage)
            self.objective.lock()  # before the study is touched: a second search is refused at once
            url = mask_storage(config.resolved_storage)
            try:
                storage = open_storage(config.resolved_storage)
                if self.objective.finished and config.resolved_study_name not in optuna.get_all_study_names(
                        storage=storage):
                    # A run with finished trials resumes its study; a new one here would be empty.
                    raise ConfigError(
                        f"the run's checkpoint holds {len(self.objective.finished)} finished trial(s), but storage "
                        f"{url!r} has no study {config.resolved_study_name!r}; give the storage that holds it")
                self.study = optuna.create_study(
                    study_name=config.resolved_study_name, storage=storage,
                    directions=self.objective.directions, load_if_exists=True, pruner=create_pruner(config.pruner),
                    sampler=sampler)
            except (ImportError, sqlalchemy.exc.SQLAlchemyError) as exc:
                why = scrub(reason(exc), config.resolved_storage)
                raise ConfigError(f"cannot open storage {url!r}: {why}") from None
            with warnings.catch_warnings():  # metric names are "experimental" in Optuna; the dashboard shows them
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study.set_metric_names(self.objective.metric_names)
            self.objective.reconcile(self.study)  # before any TensorBoard file is written
            # Only now, when nothing refused the run: the journal mode is written into the file.
            self._journal.enter_context(sqlite_write_ahead(storage))
            self.tensorboard = self.objective.tensorboard_callback()
            self.callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = [
                self.objective.retention_callback(), self.objective.anatomy_callback(), self.tensorboard]
            self._catch_up()
        except BaseException:
            self._journal.close()
            self.objective.close()
            if new_journal and journal is not None and journal.is_file() and journal.stat().st_size == 0:
                journal.unlink()  # opened, nothing written to it: the journal file goes too
            if created:  # e.g. a storage that cannot be opened: leave no empty run folder behind
                (self.run_dir / LOCK_FILE).unlink(missing_ok=True)
                for folder in created:
                    with contextlib.suppress(OSError):  # not empty: something was written, keep it
                        folder.rmdir()
            raise

    def _count_finished(self) -> int:
        return len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

    def run(self) -> SearchResult:
        config, study = self.config, self.study
        self._start_followers()
        done = self._count_finished()
        with tqdm(total=config.trials, initial=min(done, config.trials), disable=not self.progress,
                  desc=f"search {config.resolved_study_name}", unit="trial", dynamic_ncols=True) as bar:
            while done < config.trials:
                with deferred():  # a trial asked for is always a trial this loop settles
                    study.sampler = create_sampler(config.resolved_sampler, self.objective.space,
                                                   seed=config.seed * 100_003 + self.objective.position)
                    trial = study.ask()
                try:
                    self._trial(trial)
                except BaseException as exc:
                    lost = self._settle(trial.number)
                    if isinstance(exc, SearchInterrupted):
                        exc.lost_trial, exc.finished = lost, self._count_finished()
                    raise
                done = self._count_finished()
                bar.update(1)
                pool = self.objective.pool.summary()
                quality = self.objective.trainer.metric.quality
                best = max((e.score for e in self.objective.pool.entries.values()), key=quality, default=0.0)
                bar.set_postfix(best=f"{best:.3f}", retained=f"{pool['retained_mean']:.3f}",
                                forget=f"{pool['forgetting_mean']:+.3f}")
        if self.world.distributed:
            self.world.share(None)  # the other ranks stop: the final re-scores are rank 0's alone
            leave(self.world)  # all together, before rank 0 works on alone and the others exit
        self.final = self._final_selection()
        self.tensorboard.close()
        return self.result()

    def _start_followers(self) -> None:
        """Send the other ranks of a data-parallel search (:func:`follow_search`) the options in force
        (those kept from the run folder on resume included) and the supernet, strategy and optimiser
        states (the checkpoint's on resume): no file system needs to be shared."""
        if not self.world.distributed:
            return
        buffer = io.BytesIO()
        torch.save({"supernet": self.objective.supernet.state_dict(), "strategy": self.objective.strategy.state_dict(),
                    "optimizer": self.objective.optimizer.state_dict()}, buffer)
        self.world.share({"config": self.config, "state": buffer.getvalue(),
                          "statistics": self.objective.data.statistics})  # the run's, recorded or measured

    def _trial(self, trial: optuna.Trial) -> None:
        """Train ``trial``'s candidate, tell the study and run the callbacks."""
        try:
            values: Any = self.objective(trial)
            state = TrialState.COMPLETE
        except optuna.TrialPruned:
            values, state = None, TrialState.PRUNED
        self._tell(trial.number, values, state)

    def _tell(self, number: int, values: Any, state: TrialState) -> None:
        # The checkpoint already holds the trial: telling the study and updating the pool, the
        # anatomy and TensorBoard go together, a signal waits for them (a few seconds at most).
        with deferred():
            frozen = self.study.tell(number, values, state=state)
            if frozen.state == TrialState.FAIL:  # Optuna fails a NaN value; asking again would loop forever
                raise RuntimeError(f"trial {frozen.number} failed: its score is not a number; stopping the search")
            self._after_trial(frozen)

    def _after_trial(self, frozen: FrozenTrial) -> None:
        """The after-trial work (pool re-score, anatomy, TensorBoard), then the study's note that it
        is done: a stop in between (``kill -9``) leaves it owed, and :meth:`_catch_up` redoes it."""
        for callback in self.callbacks:
            callback(self.study, frozen)
        self.study.set_user_attr(OBSERVED_ATTR, frozen.number)

    def _catch_up(self) -> None:
        """Redo the after-trial work of the last finished trial if a stop cut it short (or it was told
        only now, by :meth:`SupernetObjective.reconcile`). It is idempotent: the pool's re-scores are
        in the checkpoint, and nothing has trained since, so the anatomy and the logged values are
        those an uninterrupted run took."""
        if not self.objective.finished:
            return
        last = max(self.objective.finished)
        if self.study.user_attrs.get(OBSERVED_ATTR) == last:
            return
        frozen = next((t for t in self.study.get_trials(deepcopy=False) if t.number == last), None)
        if frozen is not None and frozen.state in (TrialState.COMPLETE, TrialState.PRUNED):
            with deferred():
                self._after_trial(frozen)

    def _settle(self, number: int) -> int | None:
        """After trial ``number`` was cut short: tell it its result if the checkpoint already holds it
        (the interruption fell between the checkpoint and the study), else mark it ``FAIL`` and
        enqueue its candidate again. Returns ``number`` when it was marked ``FAIL``."""
        try:
            with deferred():
                (frozen,) = (t for t in self.study.get_trials(deepcopy=False) if t.number == number)
                if frozen.state != TrialState.RUNNING:
                    return None
                if number in self.objective.finished:
                    state, value = self.objective.finished[number]
                    self._tell(number, value if state == "COMPLETE" else None, TrialState[state])
                    return None
                self.objective.mark_lost(self.study, number)
                return number
        except Exception as exc:  # the storage may be what failed: the next run's reconcile settles it
            warnings.warn(f"trial {number} could not be settled ({exc}); the next run marks it FAIL",
                          RuntimeWarning, stacklevel=2)
            return None

    def _final_selection(self) -> FinalScores | None:
        """Every candidate re-scored on the final supernet, recorded everywhere (wpl_nas.selection); taken
        again only when the supernet has moved since the run folder's ``final.json``."""
        recorded = load_final(self.run_dir)
        if recorded is not None and recorded.after_trial == latest_finished(self.study) \
                and recorded.metric == self.objective.trainer.metric.name:
            return recorded
        final = rescore_final(self.study, self.objective.score, metric=self.objective.trainer.metric.name,
                              top_k=self.config.final_top_k)
        if final is not None:
            final.write(self.run_dir)
            final.publish(self.study)
            self.tensorboard.log_final(final)
            final_note(self.study, final)
        return final

    def close(self) -> None:
        """Close the event file, leave the SQLite study whole in its file, release the run folder's lock."""
        self.tensorboard.close()
        self._journal.close()
        self.objective.close()

    def result(self) -> SearchResult:
        best_arch, best_score = None, float("nan")
        by = self.config.choose_by if self.final is not None else "training"
        if self.final is not None and by == "final":
            row = self.final.best("final")
            best_arch, best_score = Architecture.parse(row["arch"]), float(row["final"])
        elif (best := best_at_training(self.study)) is not None:
            best_arch, best_score = Architecture.parse(best.user_attrs["arch"]), float(best.values[0])
        return SearchResult(
            study=self.study,
            best_arch=best_arch,
            best_score=best_score,
            run_dir=self.run_dir,
            pool=self.objective.pool.summary(),
            storage=mask_storage(self.config.resolved_storage),
            metric=self.objective.trainer.metric.name,
            final=self.final,
            choose_by=by,
        )


def run_search(config: SearchConfig | None = None, *, progress: bool = True,
               command: Sequence[str] | None = None, world: World | None = None,
               on_start: Callable[[], None] | None = None, **overrides: Any) -> SearchResult:
    """Run (or resume) a search and return its result.

    Re-running with the same config resumes: the study from its storage, and the supernet,
    strategy, optimiser, retained pool and RNG states from the run's checkpoint; at most the
    trial in flight is lost, and its candidate is trained again first, so the completed candidates,
    their scores and the final supernet equal an uninterrupted run's. ``trials`` is the number of
    finished (complete or pruned) trials the study ends with, so a larger value extends it.
    Options of ``SearchConfig.may_change_on_resume()`` may differ from the run's (e.g. a lower ``lr``
    after a divergence): they apply to the candidates still to come and are recorded in the run
    folder's config.yaml (``history``).

    While it runs, SIGINT (Ctrl-C) and SIGTERM raise :class:`~wpl_nas.tracking.signals.SearchInterrupted`
    (a ``KeyboardInterrupt``) at the next point where no file or study record is half written: the
    trial in flight is marked ``FAIL``, the checkpoint keeps the last finished trial's state. The
    previous signal handlers are restored when it returns.

    Args:
        config: The search configuration (defaults: a small MNIST-1D search with WPL).
        progress: Show a progress bar.
        command: The command line to record in the run folder's ``config.yaml``.
        world: The processes of a data-parallel search under torchrun (:mod:`wpl_nas.distributed`,
            process group started), of which this is rank 0; the others run :func:`follow_search`
            [default: this process alone]. When the last trial is done, every rank ends the group
            together (:func:`~wpl_nas.distributed.leave` with the world), and rank 0 selects alone.
        on_start: Called once every option is checked and the run folder and study are open, right
            before the first trial (the CLI prints its threads line there): a search refused for a
            bad option never calls it.
        **overrides: Fields of ``config`` to replace, e.g. ``trials=5`` or ``wpl={"alpha": 10}``.

    Raises:
        ConfigError: any invalid value or name, or a change of an option that may not change on
            resume, before anything is written.
        SearchInterrupted: SIGINT or SIGTERM stopped the search (its ``exit_code``: 130 or 143).
        TrainingDiverged: a candidate's loss became NaN or infinite (its trial is marked ``FAIL``).
    """
    config = config or SearchConfig()
    if overrides:
        config = config.replace(**overrides)
    with interrupts_handled():
        search = _Search(config, progress=progress, command=command if command is not None else sys.argv,
                         world=world)
        try:
            if on_start is not None:
                on_start()
            return search.run()
        finally:
            search.close()


def follow_search(world: World) -> int:
    """The part of a rank other than 0 in a data-parallel search (rank 0 runs :func:`run_search`).

    It receives the options and the states from rank 0, then trains and consolidates each
    candidate rank 0 names, on its slice of every batch, re-scores its share of the retained pool
    rank 0 names after it, and stops when rank 0 says so, ending the process group together with
    rank 0 (:func:`~wpl_nas.distributed.leave` with the world). It writes
    nothing and prints nothing: the study, the run folder and every score recorded are rank 0's.
    Should rank 0 fail, torchrun ends this process with the group.

    Returns:
        The number of candidates trained.

    Raises:
        RuntimeError: this rank's supernet or strategy state no longer matches rank 0's.
    """
    start = world.share()
    if start is None:  # rank 0 had nothing to train
        return 0
    config: SearchConfig = start["config"]
    use_threads(config.threads)
    device = resolve_device(config.device)
    space = load_space(config.space)
    _, parts, trainer = search_parts(config, space, device=device, world=world, statistics=start.get("statistics"))
    state = torch.load(io.BytesIO(start["state"]), map_location=device, weights_only=True)
    parts.supernet.load_state_dict(state["supernet"])
    parts.strategy.load_state_dict(state["strategy"])
    parts.optimizer.load_state_dict(state["optimizer"])  # rank 0's hyper-parameters in force included
    trained = 0
    while (message := world.share()) is not None:
        arch_text, position, number, checksum = message
        mine = state_checksum(parts.supernet, parts.strategy)
        if mine != checksum:
            raise RuntimeError(f"rank {world.rank}'s supernet and strategy state differ from rank 0's before trial "
                               f"{number} (checksum {mine!r} against {checksum!r})")
        arch = Architecture.parse(arch_text)
        result = trainer.train(arch, trial_index=position, on_epoch=lambda epoch, score: bool(world.share()),
                               name=f"trial {number}")
        if not result.pruned:
            trainer.consolidate(arch, trial_index=position, score=result.score)
        world.divide(world.share(), lambda member: trainer.score(Architecture.parse(member)))  # the pool's re-scores
        trained += 1
    leave(world)  # together with rank 0, which selects alone after it
    return trained
