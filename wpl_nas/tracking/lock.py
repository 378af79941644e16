"""One writer per run folder: an OS file lock held for as long as a process writes there.

A search mutates one supernet and one checkpoint, so two processes searching the same run folder
would overwrite each other's work (and fail each other's trials). The lock is ``flock`` on
``RUN_DIR/search.lock``: the kernel drops it when the holder exits, however it exits (``kill -9``
included), so a stale lock is never mistaken for a live one; the file itself only tells the next
comer which process holds it. Readers (``report``, ``anatomy``, ``rank``, a user's
``optuna.load_study``) take no lock. Within one process the lock is shared: a second objective on
the same folder (e.g. a resumed one in a notebook) does not lock itself out.

On platforms without ``fcntl`` (Windows) and on file systems that do not support ``flock``
(some network mounts) no lock is taken.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
from pathlib import Path
from typing import IO

from wpl_nas.errors import ConfigError, RunLocked, reason

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "RunLock", "create_run_folder"]

LOCK_FILE = "search.lock"

#: Locks this process holds: resolved run folder -> (open lock file, number of holders).
_HELD: dict[Path, tuple[IO[str], int]] = {}


class RunLock:
    """The write lock of one run folder (see the module docstring).

    Call order: :meth:`acquire` (idempotent) before the first write, :meth:`release` when done
    (or let the process end).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._held = False

    @property
    def path(self) -> Path:
        return self.run_dir / LOCK_FILE

    def acquire(self) -> None:
        """Take the lock, or raise at once if another process holds it.

        Raises:
            RunLocked: another live process holds the folder; the message names it.
            ConfigError: the folder cannot be written (read-only, not the user's, ...).
        """
        if self._held:
            return
        create_run_folder(self.run_dir)
        try:
            if fcntl is None:
                return
            key = self.path.resolve()
            if key in _HELD:
                file, count = _HELD[key]
                _HELD[key] = (file, count + 1)
                self._held = True
                return
            file = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held open while the lock lives
        except OSError as exc:
            raise _unwritable(self.run_dir, exc) from None
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            raise RunLocked(
                f"run folder {self.run_dir} is being searched by {holder}: one process writes a run at a time. "
                "Wait for it to finish or stop it (Ctrl-C, kill); read-only commands (report, anatomy, rank, "
                "dashboard) work meanwhile") from None
        except OSError:  # a file system without flock: go on unlocked rather than refuse to run
            file.close()
            return
        file.seek(0)
        file.truncate()
        since = datetime.datetime.now().isoformat(timespec="seconds")
        file.write(f"process {os.getpid()} on {socket.gethostname()} (since {since})\n")
        file.flush()
        _HELD[key] = (file, 1)
        self._held = True

    def release(self) -> None:
        """Give the lock up (the last holder in this process unlocks the file)."""
        if not self._held:
            return
        self._held = False
        key = self.path.resolve()
        file, count = _HELD.pop(key)
        if count > 1:
            _HELD[key] = (file, count - 1)
            return
        fcntl.flock(file.fileno(), fcntl.LOCK_UN)
        file.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown the OS drops the lock anyway
            self.release()


def create_run_folder(run_dir: Path) -> None:
    """Make ``run_dir`` (and its parents) if missing: a search's first write to it.

    Raises:
        ConfigError: it cannot be made (a read-only file system, a folder the user may not write).
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(run_dir, exc) from None


def _unwritable(run_dir: Path, exc: OSError) -> ConfigError:
    return ConfigError(f"cannot write to run folder {run_dir} ({exc.strerror or reason(exc)}): a search keeps its "
                       "checkpoint, study and logs there; make it writable or choose another --runs-dir")

