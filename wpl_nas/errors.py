"""Errors raised for bad user input, and for training that cannot go on."""

from __future__ import annotations

import errno

__all__ = ["ConfigError", "PluginWarning", "RunLocked", "TrainingDiverged", "reason", "write_refused"]

#: ``errno`` values of a write the file system refused: a full disk or quota, a read-only file
#: system, a folder the user may not write, a file larger than the process may write.
_REFUSED = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})
#: What SQLite says instead (through SQLAlchemy and Optuna's storage).
_SQLITE_REFUSED = ("database or disk is full", "readonly database", "unable to open database file")


class ConfigError(ValueError):
    """A configuration value, file or name given by the user is invalid.

    The message always names the offending value and, where there is a closed set, the
    valid choices. The CLI turns it into a usage error (exit code 2, no traceback).
    """


class PluginWarning(UserWarning):
    """An installed plugin (an entry point of another package) could not be loaded, or clashes with a
    name already taken; the message names its package and entry point. Searches go on without it."""


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


def write_refused(exc: BaseException) -> str | None:
    """If ``exc`` (or an exception it was raised from) is the file system refusing a write (see
    ``_REFUSED``; SQLite's own words for the same), one line saying what and where; else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _REFUSED:
            where = f" {current.filename}" if current.filename else ""
            return f"cannot write{where}: {current.strerror or reason(current)}"
        text = str(current)
        if any(words in text for words in _SQLITE_REFUSED):
            return f"cannot write the study's database: {reason(current, limit=160)}"
        current = current.__cause__ or current.__context__
    return None
