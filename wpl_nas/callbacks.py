"""Optuna study callbacks: retained-quality tracking and TensorBoard logging.

Both follow Optuna's callback signature ``callback(study, frozen_trial)`` and run after the study
has recorded the trial, so either can be attached to any ``study.optimize(..., callbacks=[...])``
or left off. Attach :class:`RetentionCallback` before :class:`TensorBoardCallback`: the second logs
the pool the first has just re-scored.

Finished Optuna trials cannot change, so what the retention callback learns after a trial goes on
the *study*'s user attributes:

``latest_rescore``, ``latest_forgetting``
    ``{trial: score}`` and ``{trial: forgetting}``: each pool member's most recent score and its
    forgetting (score at training − that score; the other way round for perplexity), and those of
    the candidates that left the pool at this re-score (their last ones).
``retention``
    only in runs made before each trial's re-scores went on the trial itself (user attribute
    ``rescores``, :data:`~wpl_nas.evaluation.RESCORES_ATTR`): ``{trial: {after trial: score}}``, the
    retention matrix of every candidate ever pooled, rewritten whole after every trial.
    :func:`~wpl_nas.evaluation.retention_matrix` reads either.
``pool``
    the trial numbers of the current pool members; ``pool_after_trial``: the trial they follow
    (the latest re-score; ``pool_previous_after_trial``: the one before it);
    ``pool_joined`` and ``pool_left``: who joined and who left at that re-score;
    ``pool_replaced``: ``{trial: later trial}`` for entries replaced by a later trial of the same
    architecture (the pool holds each architecture once).
``retained_mean``, ``forgetting_mean``, ``forgetting_max``, ``backward_transfer``, ``rho``, ``rank_tau``
    the pool's measures (:func:`~wpl_nas.evaluation.retention_measures`);
``earlier_retained_mean``, ``earlier_forgetting_mean``, ``forgetting_this_trial``
    the same over the *earlier members* only (those already in the pool before this trial), and
    the drop this trial caused them (:meth:`~wpl_nas.evaluation.RetainedPool.step_measures`): a
    candidate joining or leaving does not move these.

and in optuna-dashboard's notes (which, unlike a finished trial's attributes, can be rewritten):
the study's note holds the pool, and each pooled trial's own note its latest re-score, forgetting,
recent re-scores and its cell drawn large, rewritten while the candidate is in the pool.

When the pool is re-scored only every K trials (``--rescore-every``), all of this is written at
the re-scores alone (the trials between them get their notes then); a trial between two re-scores
only appends its candidate's row of score at training to ``retention.csv``.

It also writes the run folder's ``retention.json`` (members, measures, and the pooled candidates'
latest scores and forgetting), atomically, and appends each re-score to ``retention.csv`` (the
matrix in long format, one row per re-score: :data:`~wpl_nas.evaluation.retention.CSV_COLUMNS`),
so both can be read while the search runs (a reader may meet a last row still being written).

The callbacks see a search through the parts they read (its retained pool, the trials it has
finished, its supernet, its run folder), never the objective itself: a
:class:`~wpl_nas.objective.SupernetObjective` hands them over in its ``*_callback`` methods. None
of them changes the supernet or writes the checkpoint.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import torch
from optuna.trial import TrialState
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter

from wpl_nas.errors import ConfigError
from wpl_nas.evaluation import (
    MEASURES,
    METRICS,
    RESCORES_ATTR,
    STEP_MEASURES,
    PoolChanges,
    RetainedPool,
    retention_matrix,
)
from wpl_nas.evaluation.anatomy import linear_cka, stage_features
from wpl_nas.notes import save_note, trial_notes
from wpl_nas.run_folder import ANATOMY_JSON, ANATOMY_LOG, RETENTION_CSV, RETENTION_JSON, RunFolder, anatomy_lines
from wpl_nas.spaces import Architecture, SearchSpace
from wpl_nas.supernet import Supernet
from wpl_nas.tracking import load_checkpoint, read_json, save_checkpoint, write_text_atomically
from wpl_nas.tracking.figures import cell_png, forgetting_heatmap, png_size
from wpl_nas.tracking.hparams import experiment_summary, session_end_summary, session_start_summary
from wpl_nas.tracking.markdown import code_cell

if TYPE_CHECKING:
    from wpl_nas.selection import FinalScores

__all__ = ["SEARCH_RUN", "SNAPSHOT_KEYS", "TRIALS_DIR", "AnatomyCallback", "RetentionCallback", "TensorBoardCallback"]

#: The trials a search has finished: number -> (state name, value), as its checkpoint holds them.
Finished = Mapping[int, tuple[str, Any]]
#: What an anatomy snapshot holds.
SNAPSHOT_KEYS = ("arch", "features", "weights")
#: TensorBoard runs under the log folder: the search's own, and one per trial (its HPARAMS row).
SEARCH_RUN = "search"
TRIALS_DIR = "trials"
class RetentionCallback:
    """Records a search's retained pool after each trial: in the study (user attributes and
    dashboard notes, see the module docstring) and in the run folder (``retention.json``,
    ``retention.csv``).

    The search re-scores the pool inside each trial it trains (complete or pruned: both moved
    shared weights), before its checkpoint; this callback publishes those re-scores. Trials the
    search did not train (failed ones) are skipped. It is idempotent: calling it again for the
    same trial writes the same records.

    Args:
        pool: The search's retained pool.
        finished: The trials the search has trained (it reads, never changes them).
        folder: The run folder.
        chance: The chance score (1/classes) for the normalised measures; None for perplexity.
    """

    def __init__(self, pool: RetainedPool, finished: Finished, folder: RunFolder, *, chance: float | None) -> None:
        self.pool, self.finished, self.folder, self.chance = pool, finished, folder, chance
        self._csv_after: int | None = None  # the last re-score this callback put in retention.csv

    def _write_csv(self, after_trial: int) -> None:
        """``retention.csv`` up to the re-score after ``after_trial``: that re-score's rows appended
        (the pool's size, however long the search), or, the first time in a process, the whole file
        written anew from the pool. The pool comes from the checkpoint, so the file is then exactly
        an uninterrupted run's whatever a stop left in it (a half-written row, or rows a cut-short
        after-trial work wrote before the resumed search redoes it)."""
        path = self.folder.path / RETENTION_CSV
        if self._csv_after is not None and self._csv_after < after_trial and path.is_file():
            with path.open("a", encoding="utf-8", newline="") as file:
                file.write(self.pool.csv_rows(after_trial))
        elif self._csv_after != after_trial or not path.is_file():
            write_text_atomically(path, self.pool.to_csv())
        self._csv_after = after_trial

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        pool, chance = self.pool, self.chance
        if trial.number not in self.finished:
            return
        if trial.number in pool.joins:
            # Between two re-scores (--rescore-every): only the newcomer's row; the measures, notes and
            # retention.json wait for the next re-score, which covers the trials since the previous one.
            if pool.recorded(trial.number):
                self._write_csv(trial.number)
            return
        changes = pool.changes(trial.number)
        # The members, and those that left at this re-score (their last scores): not every candidate
        # ever pooled, so that the study's attributes do not grow with the search.
        shown = [pool.entries[t] for t in sorted({*pool.members(), *changes.left})]
        study.set_user_attr("latest_rescore", {str(e.trial): e.latest for e in shown})
        study.set_user_attr("latest_forgetting", {str(e.trial): e.forgetting for e in shown})
        if RESCORES_ATTR not in trial.user_attrs:
            # A trial whose re-score was not recorded on it (a run made before RESCORES_ATTR, whose
            # pool caught up after it was told): the whole matrix, as such runs kept it.
            study.set_user_attr("retention", {str(t): {str(j): s for j, s in rows.items()}
                                              for t, rows in pool.matrix().items()})
        study.set_user_attr("pool", pool.members())
        study.set_user_attr("pool_joined", changes.joined)
        study.set_user_attr("pool_left", changes.left)
        study.set_user_attr("pool_replaced", {str(t): r for t, r in pool.replaced_by().items()})
        study.set_user_attr("pool_after_trial", trial.number)
        study.set_user_attr("pool_previous_after_trial", changes.previous)
        for key, value in {**pool.summary(chance=chance), **pool.step_measures(trial.number)}.items():
            study.set_user_attr(key, value)
        write_text_atomically(self.folder.path / RETENTION_JSON,
                              json.dumps(pool.to_json(after_trial=trial.number, chance=chance), indent=1))
        self._write_csv(trial.number)
        _dashboard_note(study, pool, changes)
        since = range(trial.number if changes.previous is None else changes.previous + 1, trial.number + 1)
        trial_notes(study, {*since, *pool.members(), *changes.left})


def _dashboard_note(study: optuna.Study, pool: RetainedPool, changes: PoolChanges) -> None:
    """The pool as the study's note: who joined and left, the measures over all members and over
    the earlier ones, and each member's architecture, score at training, latest re-score and
    forgetting."""
    entries = [pool.entries[t] for t in pool.members()]
    rows = [f"| {e.trial} | {code_cell(e.arch)} | {e.score:.4f} | {e.latest:.4f} | {e.forgetting:+.4f} |"
            for e in entries]
    m = pool.summary()
    step = pool.step_measures(changes.after_trial)
    replaced = pool.replaced_by()

    def who(trials: list[int]) -> str:
        return ", ".join(f"{t}" + (f" (replaced by {replaced[t]}: same architecture)" if t in replaced else "")
                         for t in trials) or "none"

    earlier = (f"The {len(changes.earlier)} earlier member(s), already in the pool before trial {changes.after_trial}: "
               f"mean retained {step['earlier_retained_mean']:.4f}, forgetting mean "
               f"{step['earlier_forgetting_mean']:+.4f}, of which trial {changes.after_trial} caused "
               f"{step['forgetting_this_trial']:+.4f}." if changes.earlier else "No earlier member yet.")
    save_note(study, "\n".join([
        f"## Retained pool after trial {changes.after_trial}", "",
        f"Joined: {who(changes.joined)}. Left: {who(changes.left)}.", "",
        f"All {len(entries)} member(s): mean retained score {m['retained_mean']:.4f}, forgetting mean "
        f"{m['forgetting_mean']:+.4f}, max {m['forgetting_max']:+.4f}, rank stability (Kendall τ) "
        f"{m['rank_tau']:+.3f}. {earlier}", "",
        "| trial | architecture | score at training | latest re-score | forgetting |", "|---:|---|---:|---:|---:|",
        *rows]))


class AnatomyCallback:
    """Where in the network pool members forget: per-stage CKA after each trial (see
    :mod:`wpl_nas.evaluation.anatomy`).

    After trial N: if N joined the pool, its stage representations on the fixed ``probe`` batch and
    the weights on its path are saved to ``run_dir/anatomy/trial_NNNN.pt``; every other member with
    a snapshot is run on the probe again (after trials whose number ``every`` divides) and its
    linear CKA per stage against its snapshot goes to ``run_dir/anatomy.jsonl`` (a line appended
    per such trial, ``{"after_trial": N, "cka": {member: {stage: CKA}}}``;
    :func:`~wpl_nas.run_folder.read_anatomy` reads it back) and, as the mean over those members, to
    the study's user attribute ``anatomy_cka`` (``{stage: CKA}``, with ``anatomy_after_trial``).
    Snapshots of candidates that left the pool are deleted: they are no longer re-scored.
    ``wpl-nas anatomy RUN_DIR`` reads these files.

    Args:
        supernet: The search's supernet (read only).
        pool: Its retained pool, as re-scored after the trial.
        finished: The trials the search has trained.
        folder: The run folder.
        probe: The probe batch (at least 2 samples: CKA compares samples), on ``device``.
        device: Where the supernet lives.
        every: Compare the members after trials whose number this divides only (each comparison runs
            every member on the probe); a joining member's snapshot is taken after every trial, as
            it must be, right after its training.
    """

    def __init__(self, supernet: Supernet, pool: RetainedPool, finished: Finished, folder: RunFolder, *,
                 probe: torch.Tensor, device: torch.device, every: int = 1) -> None:
        if len(probe) < 2:
            raise ValueError(f"the probe must hold >= 2 samples (CKA compares samples), but got {len(probe)}")
        if every < 1:
            raise ValueError(f"every must be >= 1, but got {every}")
        self.every = every
        self.supernet, self.pool, self.finished, self.folder = supernet, pool, finished, folder
        self.probe, self.device = probe, device
        self._record_after: int | None = None  # the last trial this callback put in the record

    def _record(self, after_trial: int, cka: dict[str, dict[str, float]]) -> None:
        """Append trial ``after_trial``'s line to ``anatomy.jsonl`` (none when no member was
        compared). The first time in a process the file is first cut back to the lines of earlier
        trials: a stop may have left this trial's line, or half a line, from the after-trial work a
        resumed search is redoing now; a run made before the file existed has its ``anatomy.json``
        carried over."""
        path = self.folder.path / ANATOMY_LOG
        if self._record_after is None or self._record_after >= after_trial or not path.is_file():
            if path.is_file():
                lines, bad = anatomy_lines(path)
                if bad:  # derived data: warn, keep what reads, go on
                    warnings.warn(f"{bad} line(s) of the anatomy record {path} cannot be read; dropped",
                                  RuntimeWarning, stacklevel=3)
            else:
                lines = self._legacy_lines()
            write_text_atomically(path, "".join(f"{line}\n" for after, line in lines if after < after_trial))
        if cka:
            with path.open("a", encoding="utf-8") as file:
                file.write(json.dumps({"after_trial": after_trial, "cka": cka}) + "\n")
        self._record_after = after_trial

    def _legacy_lines(self) -> list[tuple[int, str]]:
        """The old ``anatomy.json`` record as :data:`ANATOMY_LOG` lines, in trial order."""
        legacy = self.folder.path / ANATOMY_JSON
        if not legacy.is_file():
            return []
        try:
            record = read_json(legacy, what="anatomy record")
        except ConfigError as exc:  # derived data: start it again rather than stop the search
            warnings.warn(f"{exc}; starting it afresh", RuntimeWarning, stacklevel=4)
            return []
        by_trial: dict[int, dict[str, Any]] = {}
        for member, rows in (record if isinstance(record, dict) else {}).items():
            for after, cka in rows.items():
                by_trial.setdefault(int(after), {})[member] = cka
        return [(after, json.dumps({"after_trial": after, "cka": cka})) for after, cka in sorted(by_trial.items())]

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.number not in self.finished:
            return
        supernet, probe, folder = self.supernet, self.probe, self.folder
        members = self.pool.members()
        if trial.number in members:
            arch = Architecture.parse(self.pool.entries[trial.number].arch)
            save_checkpoint(folder.snapshot_path(trial.number), {
                "arch": str(arch), "features": stage_features(supernet, arch, probe),
                "weights": {n: p.detach().clone() for n, p in supernet.parameters_of(arch).items()}})
        for path in folder.anatomy_dir.glob("trial_*.pt"):
            if int(path.stem.split("_")[1]) not in members:
                path.unlink()
        if trial.number % self.every:
            return
        now: dict[str, list[float]] = {}
        by_member: dict[str, dict[str, float]] = {}
        for member in members:
            path = folder.snapshot_path(member)
            if member == trial.number or not path.is_file():
                continue
            try:
                snapshot = load_checkpoint(path, map_location=self.device, required=SNAPSHOT_KEYS,
                                           what="anatomy snapshot")
            except ConfigError as exc:  # derived data: this member's CKA is skipped, the search goes on
                warnings.warn(str(exc), RuntimeWarning, stacklevel=2)
                continue
            features = stage_features(supernet, Architecture.parse(snapshot["arch"]), probe)
            cka = {stage: linear_cka(snapshot["features"][stage], features[stage]) for stage in features}
            by_member[str(member)] = cka
            for stage, value in cka.items():
                now.setdefault(stage, []).append(value)
        self._record(trial.number, by_member)
        study.set_user_attr("anatomy_cka", {stage: sum(v) / len(v) for stage, v in now.items()})
        study.set_user_attr("anatomy_after_trial", trial.number)


#: TensorBoard tag of each pool measure (grouped by prefix: TensorBoard's Time Series page lists the
#: groups alphabetically and opens the first two, so forgetting and retained come first).
_POOL_TAGS = {"retained_mean": "retained/mean_{short}", "forgetting_mean": "forgetting/mean",
              "forgetting_max": "forgetting/max", "backward_transfer": "forgetting/backward_transfer",
              "rho": "forgetting/hat_ratio", "rank_tau": "stability/kendall_tau",
              "earlier_retained_mean": "retained/earlier_mean_{short}",
              "earlier_forgetting_mean": "forgetting/earlier_mean", "forgetting_this_trial": "forgetting/this_trial"}


class TensorBoardCallback:
    """Writes each finished trial to TensorBoard; the global step is the trial number.

    Two kinds of run under ``log_dir`` (point ``tensorboard --logdir`` at it):

    ``search``
        the search as a whole. Per trial (complete or pruned): ``val/<score>`` (score at training),
        ``train/loss``, the strategy's penalty as ``train/<penalty_tag>`` with ``/`` as ``_`` (e.g.
        ``train/wpl_penalty``), the architecture as text (``trial/arch``) and its cell as an image
        (``trial/cell``, when the ``space`` is given). When a :class:`RetentionCallback` ran for this
        trial just before and re-scored the pool (every trial, or every K with ``--rescore-every``), the
        pool's measures: ``retained/mean_<score>``, ``forgetting/mean``,
        ``forgetting/max``, ``forgetting/backward_transfer``, ``forgetting/hat_ratio``,
        ``stability/kendall_tau``, and over the earlier members only ``retained/earlier_mean_<score>``,
        ``forgetting/earlier_mean`` and ``forgetting/this_trial``; and the forgetting matrix as a
        heatmap image, ``forgetting/matrix`` (every ``figures_every`` trials). When an :class:`AnatomyCallback` ran too:
        ``similarity/cka_<stage>``, the pool's mean CKA per stage.
    ``trials/trial_NNNN``
        one per trial: its row of the HPARAMS table (its edges' ops, parameter count and state)
        and that row's metrics, which are scalars of the run: ``trial/score_at_training`` at its own
        step; ``retained/candidate_<score>`` and ``forgetting/candidate`` (its latest re-score and
        forgetting) at its own step and again after every trial while it is in the pool, so the
        HPARAMS row always shows the latest values, and the Time Series charts of these tags draw
        one line per candidate; ``final/candidate_<score>`` once the final selection has run.

    The score's short name is ``acc`` for accuracy, ``ppl`` for perplexity.

    Args:
        log_dir: The TensorBoard log folder (its runs are opened at the first trial).
        penalty_tag: Tag of the strategy's penalty, or None for none.
        space: The search space, to draw each candidate's cell and give the HPARAMS table each
            edge's choices.
        metric: The score's name (:data:`~wpl_nas.evaluation.scoring.METRICS`).
        figures_every: Draw the ``forgetting/matrix`` heatmap after every this many trials (trials
            whose number it divides; when the pool is re-scored only every K trials, the first
            re-score at or after each of them): the heatmap covers every candidate ever pooled, so
            its cost grows with the search, where everything else logged per trial does not.
    """

    def __init__(self, log_dir: str | Path, *, penalty_tag: str | None = None,
                 space: SearchSpace | None = None, metric: str = "accuracy", figures_every: int = 1) -> None:
        if figures_every < 1:
            raise ValueError(f"figures_every must be >= 1, but got {figures_every}")
        self.log_dir = Path(log_dir)
        self.figures_every = figures_every
        self.metric = METRICS.get(metric)
        self.short = self.metric.short
        self.penalty_tag = penalty_tag
        self.space = space
        self._writer: SummaryWriter | None = None
        self._trial_writers: dict[int, SummaryWriter] = {}

    @property
    def writer(self) -> SummaryWriter:
        """The writer of the ``search`` run."""
        if self._writer is None:
            self._writer = SummaryWriter(log_dir=str(self.log_dir / SEARCH_RUN))
        return self._writer

    def trial_writer(self, number: int) -> SummaryWriter:
        """The writer of trial ``number``'s own run (``trials/trial_NNNN``)."""
        if number not in self._trial_writers:
            self._trial_writers[number] = SummaryWriter(log_dir=str(self.log_dir / TRIALS_DIR / f"trial_{number:04d}"))
        return self._trial_writers[number]

    @property
    def hparam_metrics(self) -> dict[str, str]:
        """The HPARAMS table's metric columns: ``{scalar tag: display name}``."""
        return {"trial/score_at_training": f"score at training ({self.short})",
                f"retained/candidate_{self.short}": f"latest re-score ({self.short})",
                "forgetting/candidate": "forgetting",
                f"final/candidate_{self.short}": f"final supernet ({self.short})"}

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            return
        step, attrs = trial.number, trial.user_attrs
        score = attrs.get("score_at_training")
        if score is not None:
            self.writer.add_scalar(f"val/{self.short}", score, step)
        if "train_loss" in attrs:
            self.writer.add_scalar("train/loss", attrs["train_loss"], step)
        if self.penalty_tag and "penalty" in attrs:
            self.writer.add_scalar(f"train/{self.penalty_tag.replace('/', '_')}", attrs["penalty"], step)
        if "arch" in attrs:
            self.writer.add_text("trial/arch", f"trial {step}: `{attrs['arch']}`", step)
            if self.space is not None:
                self._png("trial/cell", cell_png(self.space, Architecture.parse(attrs["arch"])), step)
        if score is not None and trial.params:
            self._hparams_row(trial, score)
        study_attrs = study.user_attrs
        if study_attrs.get("pool_after_trial") == step:
            self._pool(study, study_attrs, step)
        if study_attrs.get("anatomy_after_trial") == step:
            for stage, value in study_attrs["anatomy_cka"].items():
                if value == value:
                    self.writer.add_scalar(f"similarity/cka_{stage}", value, step)
        self._settle(study_attrs.get("pool", []))

    def _png(self, tag: str, png: bytes, step: int) -> None:
        """Log an image already encoded as PNG (``add_image`` would decode and encode it again): the
        cell drawn for the trial's artifact (:func:`~wpl_nas.tracking.figures.cell_png`) is reused."""
        width, height = png_size(png)
        image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)  # RGBA
        self.writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def _hparams_row(self, trial: optuna.trial.FrozenTrial, score: float) -> None:
        """Trial ``trial``'s HPARAMS row: the experiment record (the same in every trial's run; the
        table reads any one), its session, and its score at training."""
        hparams: dict[str, Any] = {**trial.params, "params": trial.user_attrs.get("params", 0),
                                   "state": trial.state.name}
        domains: dict[str, Any] = {"state": ["COMPLETE", "PRUNED"]}
        if self.space is not None:
            domains |= {k: list(v) for k, v in self.space.choices.items() if k in trial.params}
        start = trial.datetime_start.timestamp() if trial.datetime_start else None
        end = trial.datetime_complete.timestamp() if trial.datetime_complete else None
        writer = self.trial_writer(trial.number)
        records = writer._get_file_writer()
        records.add_summary(experiment_summary(hparams, self.hparam_metrics, domains=domains,
                                               description="one row per trial (wpl-nas)"), trial.number)
        records.add_summary(session_start_summary(hparams, start_time_secs=start), trial.number)
        records.add_summary(session_end_summary(end_time_secs=end), trial.number)
        writer.add_scalar("trial/score_at_training", score, trial.number)

    def _pool(self, study: optuna.Study, study_attrs: dict[str, Any], step: int) -> None:
        """The pool's measures, each member's latest re-score and forgetting in its own run, and the
        forgetting matrix (when ``step`` is a multiple of :attr:`figures_every`)."""
        for key in (*MEASURES, *STEP_MEASURES):
            value = study_attrs.get(key)
            if value is not None and value == value:  # NaN (e.g. τ of one member) is not logged
                self.writer.add_scalar(_POOL_TAGS[key].format(short=self.short), value, step)
        latest, forgetting = study_attrs["latest_rescore"], study_attrs.get("latest_forgetting", {})
        for member in study_attrs["pool"]:
            writer = self.trial_writer(member)
            writer.add_scalar(f"retained/candidate_{self.short}", latest[str(member)], step)
            if str(member) in forgetting:
                writer.add_scalar("forgetting/candidate", forgetting[str(member)], step)
        # A multiple of figures_every since the previous re-score: re-scoring every K trials, the
        # heatmap is drawn at the first re-score at or after each such trial (absent: the trial before).
        previous = study_attrs.get("pool_previous_after_trial", step - 1)
        if step // self.figures_every <= (-1 if previous is None else previous) // self.figures_every:
            return
        matrix = retention_matrix(study)
        at_training = {t.number: t.user_attrs["score_at_training"] for t in study.get_trials(deepcopy=False)
                       if t.number in matrix and "score_at_training" in t.user_attrs}
        self.writer.add_figure("forgetting/matrix", forgetting_heatmap(
            matrix, at_training, higher_is_better=self.metric.higher_is_better, metric=self.metric.name,
            title=f"forgetting after trial {step}"), step, close=False)

    def _settle(self, keep: Iterable[int]) -> None:
        """Flush every run; close the runs of trials that are not in the pool (they are written to
        again only by the final selection, which opens them anew)."""
        if self._writer is not None:
            self._writer.flush()
        keep = set(keep)
        for number in list(self._trial_writers):
            writer = self._trial_writers[number]
            if number in keep:
                writer.flush()
            else:
                writer.close()
                del self._trial_writers[number]

    def log_final(self, final: FinalScores) -> None:
        """The final selection: ``final/<score>`` at each re-scored candidate's trial number (beside
        ``val/<score>``, its score at training), and the forgetting over all of them at the last trial
        (``final/forgetting_mean``, ``final/forgetting_max``, ``final/stability_tau``); and in each
        candidate's own run ``final/candidate_<score>`` (the HPARAMS table's final column)."""
        for row in final.rows:
            self.writer.add_scalar(f"final/{self.short}", row["final"], row["trial"])
            self.trial_writer(row["trial"]).add_scalar(f"final/candidate_{self.short}", row["final"],
                                                       final.after_trial)
        for key, value in final.measures().items():
            if value == value:
                self.writer.add_scalar(f"final/{key}", value, final.after_trial)
        best = final.best("final")
        self.writer.add_text("final/best", f"trial {best['trial']}: `{best['arch']}` ({best['final']:.4f} on the "
                             "final supernet)", final.after_trial)
        self._settle(())

    def close(self) -> None:
        """Close the event files (a later trial reopens them)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._settle(())
