"""Ctrl-C and SIGTERM during a search: the same clean stop, never in the middle of a write.

Schedulers and ``docker stop`` send SIGTERM, a terminal sends SIGINT; either may arrive at any
moment. While :func:`interrupts_handled` is active, both raise :class:`SearchInterrupted` (a
``KeyboardInterrupt``), except inside a :func:`deferred` section (a checkpoint write, telling a
trial to the study, the study callbacks), where the signal is remembered and raised when the
outermost section ends. So a search stops within moments when it is training, and never between
writing the checkpoint and telling the study.

The handlers are installed only for the duration of the ``with`` block and the previous ones
are put back afterwards: a library must not leave global signal handlers behind. Outside a
handled block (e.g. a user's own ``study.optimize``) :func:`deferred` does nothing, and Ctrl-C
is Python's plain ``KeyboardInterrupt``.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

__all__ = ["SearchInterrupted", "deferred", "interrupts_handled"]

#: The signals a search stops cleanly on.
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SearchInterrupted(KeyboardInterrupt):
    """A search was stopped by a signal (SIGINT: Ctrl-C; SIGTERM: ``kill``, a scheduler, ``docker stop``).

    Attributes:
        signum: The signal's number.
        name: The signal's name, e.g. ``SIGTERM``.
        exit_code: What a process stopped by it exits with by convention: 128 + signal number
            (130 for SIGINT, 143 for SIGTERM).
        lost_trial: The number of the trial that was in flight and was marked ``FAIL`` (set by
            the search), or None.
        finished: How many trials the study and the checkpoint hold as finished (set by the search).
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + self.signum
        self.lost_trial: int | None = None
        self.finished: int | None = None
        super().__init__(self.name)


class _State(threading.local):
    """Per thread; only the main thread receives signals, the others never see them."""

    def __init__(self) -> None:
        self.active = 0  # nesting depth of interrupts_handled()
        self.depth = 0  # nesting depth of deferred()
        self.pending: int | None = None  # a signal that arrived inside a deferred section


_state = _State()


def _handle(signum: int, frame: FrameType | None) -> None:
    if _state.depth:
        _state.pending = signum  # raised when the outermost deferred section ends
        return
    raise SearchInterrupted(signum)


@contextlib.contextmanager
def interrupts_handled() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into :class:`SearchInterrupted` for the duration of the block,
    then restore the handlers that were there before. Re-entrant; a no-op outside the main thread
    (Python delivers signals to the main thread only, and only it may install handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _state.active:  # an enclosing block already handles them
        _state.active += 1
        try:
            yield
        finally:
            _state.active -= 1
        return
    previous: dict[signal.Signals, Any] = {}
    try:
        for signum in SIGNALS:
            previous[signum] = signal.signal(signum, _handle)
        _state.active = 1
        yield
    finally:
        _state.active = 0
        _state.pending = None
        for signum, handler in previous.items():
            # A handler installed from C (None) cannot be put back from Python; the default is closest.
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A section that a signal must not cut in two: a signal that arrives inside it is raised as
    :class:`SearchInterrupted` when the outermost section ends (unless an exception already
    leaves it, which then ends the search anyway)."""
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
    if _state.depth == 0 and _state.pending is not None and _state.active:
        signum, _state.pending = _state.pending, None
        raise SearchInterrupted(signum)
