"""Sequential training of candidates on the shared weights."""

from wpl_nas.training.trainer import CandidateTrainer, TrainResult

__all__ = ["CandidateTrainer", "TrainResult"]
