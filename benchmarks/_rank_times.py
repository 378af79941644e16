"""Where a search's time goes, by kind of work: timers wrapped around the trainer's and the objective's
methods (the same methods in every wpl-nas version this measures, so two versions compare alike).

In this process: :func:`install`, then run a search. Under torchrun, as a script, each rank imports
wpl-nas from ``SRC`` (a source tree: this one, or another version's to compare with), runs
``wpl-nas ARGS`` and rank 0 writes its totals to ``OUT`` as JSON::

    python -m torch.distributed.run --standalone --nproc-per-node 2 benchmarks/_rank_times.py SRC OUT search ...
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

#: The kinds of work timed, in seconds (wall time: a rank's waits for the others in collectives count).
KINDS = ("train_epochs", "epoch_scores", "pool_rescores", "consolidation")


def install() -> dict[str, float]:
    """Wrap the methods with timers; the returned totals grow as they run (for good: call it once
    per process). ``epoch_scores``: ``CandidateTrainer.score`` called from within ``train`` (the
    candidate in training, after each epoch); ``pool_rescores``: ``SupernetObjective._update_pool``
    (rank 0's pool re-scores after a trial, the collectives of dividing them included)."""
    from wpl_nas.objective import SupernetObjective
    from wpl_nas.training import CandidateTrainer

    totals = dict.fromkeys(KINDS, 0.0)
    training = [False]

    def timed(kind: str | None, method: Any) -> Any:
        @functools.wraps(method)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            name = "epoch_scores" if kind is None and training[0] else kind
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                if name is not None:
                    totals[name] += time.perf_counter() - start
        return wrapper

    def flagged(method: Any) -> Any:
        @functools.wraps(method)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            training[0] = True
            try:
                return method(*args, **kwargs)
            finally:
                training[0] = False
        return wrapper

    CandidateTrainer.train = flagged(CandidateTrainer.train)  # type: ignore[method-assign]
    CandidateTrainer.run_epoch = timed("train_epochs", CandidateTrainer.run_epoch)  # type: ignore[method-assign]
    CandidateTrainer.score = timed(None, CandidateTrainer.score)  # type: ignore[method-assign]
    CandidateTrainer.consolidate = timed("consolidation", CandidateTrainer.consolidate)  # type: ignore[method-assign]
    SupernetObjective._update_pool = timed("pool_rescores", SupernetObjective._update_pool)  # type: ignore[method-assign]
    return totals


def main() -> None:
    src, out, *args = sys.argv[1:]
    sys.path.insert(0, src)  # before anything imports wpl_nas: this version, whatever is installed
    totals = install()
    import wpl_nas

    if Path(wpl_nas.__file__).resolve().parents[1] != Path(src).resolve():
        raise SystemExit(f"wpl_nas was imported from {wpl_nas.__file__}, not from {src}")
    from wpl_nas.cli import main as cli_main

    sys.argv = ["wpl-nas", *args]
    try:
        cli_main()
    finally:
        if os.environ.get("RANK", "0") == "0":
            Path(out).write_text(json.dumps(totals))


if __name__ == "__main__":
    main()
