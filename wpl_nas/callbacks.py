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
``retained_mean``, ``forgetting_mean``, ``forgetting_max``
    the pool's summary (see :class:`~wpl_nas.evaluation.RetainedPool`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState
from torch.utils.tensorboard import SummaryWriter

if TYPE_CHECKING:
    from wpl_nas.objective import SupernetObjective

__all__ = ["RetentionCallback", "TensorBoardCallback"]



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
            if t.number in objective.finished and t.number not in pool.entries and t.value is not None:
                pool.add(t.number, t.user_attrs["arch"], t.value)
        rescores = {t: objective.score(pool.entries[t].arch) for t in pool.members() if t != trial.number}
        if trial.number in pool.entries:
            rescores[trial.number] = pool.entries[trial.number].score
        pool.record(trial.number, rescores)
        summary = pool.summary()
        study.set_user_attr("latest_rescore", {str(t): e.latest for t, e in pool.entries.items()})
        study.set_user_attr("retention", {str(t): {str(j): s for j, s in rows.items()}
                                          for t, rows in pool.matrix().items()})
        study.set_user_attr("pool", pool.members())
        study.set_user_attr("pool_after_trial", trial.number)
        for key, value in summary.items():
            study.set_user_attr(key, value)
        objective.save()


class TensorBoardCallback:
    """Writes each finished trial to TensorBoard; the global step is the trial number.

    Per trial (complete or pruned): ``val/acc`` (score at training), ``train/loss``, and the
    strategy's penalty under ``penalty_tag`` (e.g. ``wpl/penalty``) when the trial carries one.
    When a :class:`RetentionCallback` ran for this trial just before: ``retained/mean_acc``,
    ``forgetting/mean``, ``forgetting/max`` and one curve ``retained/trial_NNNN`` per pool member.

    Args:
        log_dir: The TensorBoard run folder (opened at the first trial).
        penalty_tag: Tag of the strategy's penalty, or None for none.
    """

    def __init__(self, log_dir: str | Path, *, penalty_tag: str | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.penalty_tag = penalty_tag
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
        score = attrs.get("score_at_training", trial.value)
        if score is not None:
            self.writer.add_scalar("val/acc", score, step)
        if "train_loss" in attrs:
            self.writer.add_scalar("train/loss", attrs["train_loss"], step)
        if self.penalty_tag and "penalty" in attrs:
            self.writer.add_scalar(self.penalty_tag, attrs["penalty"], step)
        study_attrs = study.user_attrs
        if study_attrs.get("pool_after_trial") == step:
            self.writer.add_scalar("retained/mean_acc", study_attrs["retained_mean"], step)
            self.writer.add_scalar("forgetting/mean", study_attrs["forgetting_mean"], step)
            self.writer.add_scalar("forgetting/max", study_attrs["forgetting_max"], step)
            latest = study_attrs["latest_rescore"]
            for member in study_attrs["pool"]:
                self.writer.add_scalar(f"retained/trial_{member:04d}", latest[str(member)], step)
        self.writer.flush()

    def close(self) -> None:
        """Close the event file (a later trial reopens one)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
