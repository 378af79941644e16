"""How many CPU threads PyTorch uses, and how its idle threads wait: one policy for every command.

Every command that trains or scores (``search``, ``rank``, ``retrain``, ``anatomy``, ``export``,
``select``, ``forgetting``) takes ``--threads`` and applies it with :func:`use_threads`.

Why one thread by default: the supernets of the built-in spaces are small (a training step of the
default space is a few milliseconds), so a second thread gains little even on an idle machine,
while on a machine whose cores other processes hold, PyTorch's threads wait for each other at
every operation: the default search once took 54 minutes there (1,266 CPU-seconds, against 156
on a quiet machine). ``benchmarks/bench_threads.py`` (a 3-trial search of the tiny 1-D space, 2
cores) found one thread within 1.06x of the best setting on a quiet machine and beside a CPU-bound
process, where two threads with OpenMP's own waiting (the default before) took 3.5-6.5x as long.

Why passive waiting: OpenMP's idle threads spin for a while before they sleep, which keeps a core
busy that the thread they wait for (or another process) could have used. :func:`wait_passively`
makes them sleep at once (``OMP_WAIT_POLICY=PASSIVE``) unless the environment already says how to
wait: beside a CPU hog two threads then took 1.3-1.7x the best instead of 3.5-6.5x. The price is a
wake-up per parallel operation, which small operations feel on an idle machine (two threads 1.49x
against 1.00x spinning, on the tiny space); one thread, the default, has none. It must run before
PyTorch is first imported (OpenMP reads the variable when it is loaded), so this module calls it
when it is imported, and ``import wpl_nas`` imports it first thing; a program that imports torch
earlier, or sets ``OMP_WAIT_POLICY=ACTIVE``, keeps spinning threads.

Scores depend on the thread count: threads add partial sums in another order, so the last digits
of a loss differ and, over a search, the scores. A seeded run repeats exactly with the same
``threads`` (``tests/integration/test_threads.py``).
"""

from __future__ import annotations

import os
import sys

from wpl_nas.errors import ConfigError

__all__ = ["DEFAULT_THREADS", "THREADS_HELP", "cores", "threads_in_use", "threads_line", "use_threads",
           "wait_passively"]

#: The default of every command's ``--threads`` (see the module docstring for the measurements).
DEFAULT_THREADS = 1

#: The help of every ``--threads`` option (and of ``SearchConfig.threads``).
THREADS_HELP = ("CPU threads for PyTorch (0: one per core). One never stalls when other processes hold the cores "
                "and is the fastest for the built-in 1-D spaces; on an idle machine of your own, a large space "
                "(darts, cifar10) trains faster with 0. Scores depend on it: a seeded run repeats exactly with the "
                "same --threads.")


def cores() -> int:
    """The CPUs this process may run on (its affinity mask where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _processes_here() -> int:
    """The processes of one search on this machine: torchrun's ``LOCAL_WORLD_SIZE``, else 1."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def use_threads(threads: int) -> int:
    """Run PyTorch's CPU operations on ``threads`` threads (0: one per core, :func:`cores`; under
    torchrun, each of the machine's processes takes its share of the cores).

    Returns:
        The number of threads now in use.

    Raises:
        ConfigError: ``threads`` is negative.
    """
    if threads < 0:
        raise ConfigError(f"threads must be >= 0 (0: one per core), but got threads={threads}")
    import torch  # here, not at the top: wpl_nas.__init__ imports this module before torch

    wanted = threads or max(1, cores() // _processes_here())
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
    return torch.get_num_threads()


def threads_in_use() -> int:
    """The threads PyTorch uses now. What reopens a run to score it (``rank``, ``anatomy``,
    ``select``, ``export``) keeps them: the run's own ``threads`` describes the machine it ran on."""
    import torch

    return torch.get_num_threads()


def threads_line(n: int) -> str:
    """The line a command prints about the ``n`` threads it uses, e.g. ``CPU threads: 1 of 2 cores (...)``."""
    total = cores()
    hint = "--threads 0 uses every core, faster for a large space on an idle machine" if n < total else \
        "--threads 1 if other processes need the cores"
    return f"CPU threads: {n} of {total} core{'s' * (total != 1)} ({hint})"


def wait_passively() -> None:
    """Make OpenMP's idle threads sleep at once rather than spin (``OMP_WAIT_POLICY=PASSIVE``),
    unless the environment already sets ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``. Does nothing once
    torch is imported: OpenMP reads the variable when it is loaded."""
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


wait_passively()  # on import: wpl_nas/__init__.py imports this module before anything loads torch
