"""Errors raised for bad user input, and for training that cannot go on."""

from __future__ import annotations

__all__ = ["ConfigError", "RunLocked", "TrainingDiverged", "reason"]


class ConfigError(ValueError):
    """A configuration value, file or name given by the user is invalid.

    The message always names the offending value and, where there is a closed set, the
    valid choices. The CLI turns it into a usage error (exit code 2, no traceback).
    """


class RunLocked(ConfigError):
    """Another process is writing the run folder (one writer per run: see :mod:`wpl_nas.tracking.lock`).

    The message names the holder's process id and host.
    """


class TrainingDiverged(RuntimeError):
    """A candidate's training loss became NaN or infinite.

    Raised before the run's checkpoint is rewritten, so the last saved state (the supernet after
    the previous trial) stays intact: rerunning resumes from it, and the diverged trial counts
    as lost. The message names the candidate, the epoch and the usual remedies.
    """


def reason(exc: BaseException, *, whole: bool = False, limit: int = 300) -> str:
    """``exc``'s message for a one-line error: its first line (or, with ``whole``, all of it joined),
    at most ``limit`` characters; its type's name when it has no message."""
    text = str(exc).strip()
    text = " ".join(text.split()) if whole else (text.splitlines()[0] if text else "")
    return text[:limit] or type(exc).__name__
