"""Optuna study callbacks: retained-quality tracking and TensorBoard logging.

Both follow Optuna's callback signature ``callback(study, frozen_trial)`` and run after the study
has recorded the trial, so either can be attached to any ``study.optimize(..., callbacks=[...])``
or left off. Attach :class:`RetentionCallback` before :class:`TensorBoardCallback`: the second logs
the pool the first has just re-scored.

Finished Optuna trials cannot change, so what the retention callback learns after a trial goes on
the *study*'s user attributes:

``latest_rescore``
    ``{trial: score}``: every pooled candidate's most recent score.
``retention``
    ``{trial: {after trial: score}}``: the retention matrix of every candidate ever pooled.
``pool``
    the trial numbers of the current pool members; ``pool_after_trial``: the trial they follow.
``retained_mean``, ``forgetting_mean``, ``forgetting_max``, ``backward_transfer``, ``rho``, ``rank_tau``
    the pool's measures (:func:`~wpl_nas.evaluation.retention_measures`).

It also writes the run folder's ``retention.json`` (members, measures and every candidate's row)
and ``retention.csv`` (the matrix, one ``after_N`` column per trial), atomically, so they can be
read while the search runs.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState
from torch.utils.tensorboard import SummaryWriter

from wpl_nas.errors import ConfigError
from wpl_nas.evaluation import MEASURES, METRICS, RetainedPool
from wpl_nas.evaluation.anatomy import linear_cka, stage_features
from wpl_nas.spaces import Architecture, SearchSpace
from wpl_nas.tracking import load_checkpoint, read_json, save_checkpoint, write_text_atomically
from wpl_nas.tracking.figures import cell_figure, retention_heatmap
from wpl_nas.tracking.markdown import code_cell

if TYPE_CHECKING:
    from wpl_nas.objective import SupernetObjective
    from wpl_nas.selection import FinalScores

__all__ = ["ANATOMY_DIR", "ANATOMY_JSON", "RETENTION_CSV", "RETENTION_JSON", "SNAPSHOT_KEYS", "AnatomyCallback",
           "RetentionCallback", "TensorBoardCallback", "final_note"]

#: The retention matrix in the run folder, rewritten after every trial.
RETENTION_JSON = "retention.json"
RETENTION_CSV = "retention.csv"
#: Per-stage CKA of the pool members, and their snapshots (AnatomyCallback).
ANATOMY_JSON = "anatomy.json"
ANATOMY_DIR = "anatomy"
SNAPSHOT_KEYS = ("arch", "features", "weights")



class RetentionCallback:
    """Re-scores the retained pool of a :class:`~wpl_nas.objective.SupernetObjective` after each trial.

    After every trial the objective trained (complete or pruned: both moved shared weights), the
    finished candidate joins the pool, every other member is re-scored on the fixed evaluation
    set, the study's user attributes are updated (see the module docstring) and the objective's
    checkpoint is rewritten with the new pool. Trials the objective did not train (failed ones)
    are skipped. A candidate a crash kept out of the pool joins it at the next call.
    """

    def __init__(self, objective: SupernetObjective) -> None:
        self.objective = objective

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        objective, pool = self.objective, self.objective.pool
        if trial.number not in objective.finished:
            return
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.number in objective.finished and t.number not in pool.entries:
                pool.add(t.number, t.user_attrs["arch"], t.user_attrs["score_at_training"])
        rescores = {t: objective.score(pool.entries[t].arch) for t in pool.members() if t != trial.number}
        if trial.number in pool.entries:
            rescores[trial.number] = pool.entries[trial.number].score
        pool.record(trial.number, rescores)
        # Chance accuracy is 1/classes; perplexity has no such floor worth normalising by.
        chance = 1.0 / objective.data.num_classes if objective.trainer.metric.higher_is_better else None
        study.set_user_attr("latest_rescore", {str(t): e.latest for t, e in pool.entries.items()})
        study.set_user_attr("retention", {str(t): {str(j): s for j, s in rows.items()}
                                          for t, rows in pool.matrix().items()})
        study.set_user_attr("pool", pool.members())
        study.set_user_attr("pool_after_trial", trial.number)
        for key, value in pool.summary(chance=chance).items():
            study.set_user_attr(key, value)
        objective.save()
        write_text_atomically(objective.run_dir / RETENTION_JSON,
                              json.dumps(pool.to_json(after_trial=trial.number, chance=chance), indent=1))
        write_text_atomically(objective.run_dir / RETENTION_CSV, pool.to_csv())
        _dashboard_note(study, pool, trial.number)


def _save_note(study: optuna.Study, text: str) -> None:
    """``text`` as the study's note in optuna-dashboard (a finished trial's attributes cannot change,
    a note can)."""
    try:
        from optuna_dashboard import save_note
    except ImportError:  # optuna-dashboard is optional (the `dashboard` extra)
        return
    save_note(study, text)


def _dashboard_note(study: optuna.Study, pool: RetainedPool, after: int) -> None:
    """The pool as the study's note: each member's architecture, score at training, latest re-score
    and forgetting."""
    entries = [pool.entries[t] for t in pool.members()]
    rows = [f"| {e.trial} | {code_cell(e.arch)} | {e.score:.4f} | {e.latest:.4f} | {e.forgetting:+.4f} |"
            for e in entries]
    m = pool.summary()
    _save_note(study, "\n".join([
        f"## Retained pool after trial {after}", "",
        f"Mean retained score {m['retained_mean']:.4f}, forgetting mean {m['forgetting_mean']:+.4f}, "
        f"max {m['forgetting_max']:+.4f}, rank stability (Kendall τ) {m['rank_tau']:+.3f}.", "",
        "| trial | architecture | score at training | latest re-score | forgetting |", "|---:|---|---:|---:|---:|",
        *rows]))


def final_note(study: optuna.Study, final: FinalScores, *, shown: int = 20) -> None:
    """The end of the search as the study's note: the candidates ranked by their score on the final
    supernet (the best ``shown``), with their scores at training and forgetting."""
    quality = METRICS.get(final.metric).quality
    ranked = sorted(final.rows, key=lambda r: (-quality(r["final"]), r["trial"]))
    m = final.measures()
    rows = [f"| {r['trial']} | {code_cell(r['arch'])} | {r['final']:.4f} | {r['at_training']:.4f} "
            f"| {r['forgetting']:+.4f} |" for r in ranked[:shown]]
    _save_note(study, "\n".join([
        f"## Final selection after trial {final.after_trial}", "",
        f"{len(final.rows)} candidates re-scored on the final supernet; chosen: trial {ranked[0]['trial']}. "
        f"Forgetting over all of them: mean {m['forgetting_mean']:+.4f}, max {m['forgetting_max']:+.4f}; "
        f"rank stability (Kendall τ, training vs final) {m['stability_tau']:+.3f}.", "",
        "| trial | architecture | final score | score at training | forgetting |", "|---:|---|---:|---:|---:|",
        *rows]))


class AnatomyCallback:
    """Where in the network pool members forget: per-stage CKA after each trial (see
    :mod:`wpl_nas.evaluation.anatomy`). Attach it after :class:`RetentionCallback` (it reads the pool).

    After trial N: if N joined the pool, its stage representations on a fixed probe batch (the
    first ``probe_size`` samples of the evaluation set) and the weights on its path are saved to
    ``run_dir/anatomy/trial_NNNN.pt``; every other member with a snapshot is run on the probe
    again and its linear CKA per stage against its snapshot goes to ``run_dir/anatomy.json``
    (``{member: {after trial: {stage: CKA}}}``) and, as the mean over those members, to the
    study's user attribute ``anatomy_cka`` (``{stage: CKA}``, with ``anatomy_after_trial``).
    Snapshots of candidates that left the pool are deleted: they are no longer re-scored.
    ``wpl-nas anatomy RUN_DIR`` reads these files.
    """

    def __init__(self, objective: SupernetObjective, *, probe_size: int = 256) -> None:
        if probe_size < 2:
            raise ValueError(f"probe_size must be >= 2 (CKA compares samples), but got {probe_size=}")
        self.objective = objective
        self.probe_size = probe_size

    @property
    def folder(self) -> Path:
        return self.objective.run_dir / ANATOMY_DIR

    def snapshot_path(self, trial: int) -> Path:
        return self.folder / f"trial_{trial:04d}.pt"

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        objective, pool = self.objective, self.objective.pool
        if trial.number not in objective.finished:
            return
        supernet, probe = objective.supernet, objective.trainer.eval_x[: self.probe_size]
        members = pool.members()
        if trial.number in members:
            arch = Architecture.parse(pool.entries[trial.number].arch)
            save_checkpoint(self.snapshot_path(trial.number), {
                "arch": str(arch), "features": stage_features(supernet, arch, probe),
                "weights": {n: p.detach().clone() for n, p in supernet.parameters_of(arch).items()}})
        record_path = objective.run_dir / ANATOMY_JSON
        record: dict[str, dict[str, dict[str, float]]] = {}
        if record_path.is_file():
            try:
                record = read_json(record_path, what="anatomy record")
            except ConfigError as exc:  # derived data: start it again rather than stop the search
                warnings.warn(f"{exc}; starting it afresh", RuntimeWarning, stacklevel=2)
            if not isinstance(record, dict):
                record = {}
        now: dict[str, list[float]] = {}
        for member in members:
            path = self.snapshot_path(member)
            if member == trial.number or not path.is_file():
                continue
            try:
                snapshot = load_checkpoint(path, map_location=objective.device, required=SNAPSHOT_KEYS,
                                           what="anatomy snapshot")
            except ConfigError as exc:  # derived data: this member's CKA is skipped, the search goes on
                warnings.warn(str(exc), RuntimeWarning, stacklevel=2)
                continue
            features = stage_features(supernet, Architecture.parse(snapshot["arch"]), probe)
            cka = {stage: linear_cka(snapshot["features"][stage], features[stage]) for stage in features}
            record.setdefault(str(member), {})[str(trial.number)] = cka
            for stage, value in cka.items():
                now.setdefault(stage, []).append(value)
        for path in self.folder.glob("trial_*.pt"):
            if int(path.stem.split("_")[1]) not in members:
                path.unlink()
        write_text_atomically(record_path, json.dumps(record, indent=1))
        study.set_user_attr("anatomy_cka", {stage: sum(v) / len(v) for stage, v in now.items()})
        study.set_user_attr("anatomy_after_trial", trial.number)


#: TensorBoard tag of each pool measure (grouped by prefix).
_POOL_TAGS = {"retained_mean": "retained/mean_{short}", "forgetting_mean": "forgetting/mean",
              "forgetting_max": "forgetting/max", "backward_transfer": "forgetting/backward_transfer",
              "rho": "forgetting/hat_ratio", "rank_tau": "ranking/kendall_tau"}


class TensorBoardCallback:
    """Writes each finished trial to TensorBoard; the global step is the trial number.

    Tags name the score by its short name: ``acc`` for accuracy, ``ppl`` for perplexity.
    Per trial (complete or pruned): ``val/acc`` (score at training), ``train/loss``, and the
    strategy's penalty under ``penalty_tag`` (e.g. ``wpl/penalty``) when the trial carries one.
    When a :class:`RetentionCallback` ran for this trial just before: the pool's measures
    (``retained/mean_acc``, ``forgetting/mean``, ``forgetting/max``, ``forgetting/backward_transfer``,
    ``forgetting/hat_ratio``, ``ranking/kendall_tau``), one curve ``retained/trial_NNNN`` per pool
    member, and the retention matrix as a heatmap image ``retention/matrix``. When an
    :class:`AnatomyCallback` ran too: ``anatomy/cka_<stage>``, the pool's mean CKA per stage.

    Also per trial: the architecture as text (``arch``), its cell as an image (``cell/graph``, when
    the ``space`` is given) and a row of the HPARAMS table (its edges' ops and parameter count
    against ``hparam/score_at_training``; each row is its own run, ``trial_NNNN``).

    Args:
        log_dir: The TensorBoard run folder (opened at the first trial).
        penalty_tag: Tag of the strategy's penalty, or None for none.
        space: The search space, to draw each candidate's cell.
        metric: The score's name (:data:`~wpl_nas.evaluation.scoring.METRICS`).
    """

    def __init__(self, log_dir: str | Path, *, penalty_tag: str | None = None,
                 space: SearchSpace | None = None, metric: str = "accuracy") -> None:
        self.log_dir = Path(log_dir)
        self.short = METRICS.get(metric).short
        self.penalty_tag = penalty_tag
        self.space = space
        self._writer: SummaryWriter | None = None

    @property
    def writer(self) -> SummaryWriter:
        if self._writer is None:
            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        return self._writer

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
            self.writer.add_scalar(self.penalty_tag, attrs["penalty"], step)
        if "arch" in attrs:
            self.writer.add_text("arch", f"trial {step}: `{attrs['arch']}`", step)
            if self.space is not None:
                self.writer.add_figure("cell/graph", cell_figure(self.space, Architecture.parse(attrs["arch"])), step)
        if score is not None and trial.params:
            # One row per trial in the HPARAMS tab (its own run, named after the trial).
            self.writer.add_hparams({**trial.params, "params": attrs.get("params", 0)},
                                    {"hparam/score_at_training": score}, run_name=f"trial_{step:04d}",
                                    global_step=step)
        study_attrs = study.user_attrs
        if study_attrs.get("pool_after_trial") == step:
            for key in MEASURES:
                if study_attrs.get(key) == study_attrs.get(key):  # NaN (e.g. τ of one member) is not logged
                    self.writer.add_scalar(_POOL_TAGS[key].format(short=self.short), study_attrs[key], step)
            latest = study_attrs["latest_rescore"]
            for member in study_attrs["pool"]:
                self.writer.add_scalar(f"retained/trial_{member:04d}", latest[str(member)], step)
            matrix = {int(t): {int(j): v for j, v in row.items()} for t, row in study_attrs["retention"].items()}
            self.writer.add_figure("retention/matrix", retention_heatmap(
                matrix, title=f"retention after trial {step}"), step, close=False)
        if study_attrs.get("anatomy_after_trial") == step:
            for stage, value in study_attrs["anatomy_cka"].items():
                if value == value:
                    self.writer.add_scalar(f"anatomy/cka_{stage}", value, step)
        self.writer.flush()

    def log_final(self, final: FinalScores) -> None:
        """The final selection: ``final/<score>`` at each re-scored candidate's trial number (beside
        ``val/<score>``, its score at training), and the forgetting over all of them at the last trial
        (``final/forgetting_mean``, ``final/forgetting_max``, ``final/stability_tau``)."""
        for row in final.rows:
            self.writer.add_scalar(f"final/{self.short}", row["final"], row["trial"])
        for key, value in final.measures().items():
            if value == value:
                self.writer.add_scalar(f"final/{key}", value, final.after_trial)
        best = final.best("final")
        self.writer.add_text("final/chosen", f"trial {best['trial']}: `{best['arch']}` ({best['final']:.4f} on the "
                             "final supernet)", final.after_trial)
        self.writer.flush()

    def close(self) -> None:
        """Close the event file (a later trial reopens one)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
