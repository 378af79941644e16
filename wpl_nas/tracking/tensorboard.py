"""TensorBoard logging of trials and of the retained pool."""

from __future__ import annotations

from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from wpl_nas.evaluation import RetainedPool
from wpl_nas.training import TrainResult

__all__ = ["TrialLogger"]


class TrialLogger:
    """Writes real TensorBoard event files; the global step is the trial number.

    Per trial: ``train/loss``, ``val/acc`` (and the strategy's penalty, e.g. ``wpl/penalty``).
    Study level: ``retained/mean_acc``, ``forgetting/mean``, ``forgetting/max``, and one curve
    ``retained/trial_NNNN`` per pool member with its re-scores.
    """

    def __init__(self, log_dir: str | Path) -> None:
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log_trial(self, step: int, result: TrainResult, *, penalty_tag: str | None) -> None:
        self.writer.add_scalar("train/loss", result.loss, step)
        self.writer.add_scalar("val/acc", result.score, step)
        if penalty_tag:
            self.writer.add_scalar(penalty_tag, result.penalty, step)

    def log_pool(self, step: int, pool: RetainedPool) -> None:
        summary = pool.summary()
        self.writer.add_scalar("retained/mean_acc", summary["retained_mean"], step)
        self.writer.add_scalar("forgetting/mean", summary["forgetting_mean"], step)
        self.writer.add_scalar("forgetting/max", summary["forgetting_max"], step)
        for trial in pool.members():
            self.writer.add_scalar(f"retained/trial_{trial:04d}", pool.entries[trial].latest, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
