#!/usr/bin/env python
"""Kill a real search at random moments, resume it, and compare with one that was never killed.

A NAS run is left unattended for days; it must survive ``kill -9`` (an OOM killer, a preempted
node) at any moment. This campaign runs ``python -m wpl_nas search`` on a small space in a
subprocess, kills it with SIGKILL after a random delay, checks the run folder, resumes with the
same command, and repeats until the search has finished; then it runs the same search without
interruption and compares. Reported (targets: 0, 0, 0):

* **lost**: complete trials that the study showed before a kill and not after the resume;
* **corrupt**: files of the run folder that do not read back after a kill (every ``*.pt`` with
  ``torch.load(weights_only=True)``, every ``*.json`` as JSON, ``config.yaml`` as YAML), and
  ``*.tmp`` files left behind once the search has finished;
* **differs**: of the items that must equal the uninterrupted run's (the sequence of completed
  architectures and their scores, the retention matrix, the anatomy record's members, ``final.json``'s
  scores), how many do not.

Usage::

    python benchmarks/bench_kill.py --kills 20                # ~5 min on 2 cores
    python benchmarks/bench_kill.py --quick                   # up to 3 kills of a 12-trial search, ~1 min

The delays are drawn uniformly in ``[0, --max-delay]`` seconds (seeded by ``--seed``), a range
that spans start-up, training, checkpoint writing, pool re-scoring, anatomy snapshots and
TensorBoard writing, so kills land in every stage of a trial.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml

from wpl_nas.evaluation import retention_matrix
from wpl_nas.run_folder import read_anatomy

#: A small 1-D cell space (the tests' tiny space): a trial takes about a second on one thread.
SPACE = Path(__file__).resolve().parent / "spaces" / "tiny1d.yaml"


def command(space: Path, runs: Path, data: Path, trials: int) -> list[str]:
    return [sys.executable, "-m", "wpl_nas", "search", "--space", str(space), "--runs-dir", str(runs),
            "--data-dir", str(data), "--study-name", "kill", "--trials", str(trials), "--epochs", "1",
            "--batch-size", "256", "--eval-samples", "200", "--device", "cpu", "--threads", "1",
            "--no-progress", "--seed", "0"]


def complete_trials(run: Path) -> dict[int, tuple[str, float]]:
    """``{trial: (arch, value)}`` of the study's complete trials (empty if there is no study yet)."""
    db = run / "study.db"
    if not db.is_file():
        return {}
    try:
        study = optuna.load_study(study_name="kill", storage=f"sqlite:///{db}")
    except KeyError:
        return {}
    return {t.number: (t.user_attrs.get("arch", ""), float(t.value))
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))}


def unreadable(run: Path) -> list[str]:
    """Files of the run folder that do not read back."""
    bad = []
    for path in sorted(run.rglob("*")):
        if not path.is_file() or path.suffix == ".tmp":
            continue
        try:
            if path.suffix == ".pt":
                torch.load(path, weights_only=True)
            elif path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
            elif path.name == "config.yaml":
                yaml.safe_load(path.read_text(encoding="utf-8"))
        except Exception as exc:  # every failure to read is what this campaign counts
            bad.append(f"{path.relative_to(run)}: {type(exc).__name__}")
    return bad


def outcome(run: Path) -> dict[str, Any]:
    """What a resumed run must share with an uninterrupted one."""
    study = optuna.load_study(study_name="kill", storage=f"sqlite:///{run / 'study.db'}")
    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]

    def read(name: str) -> Any:
        path = run / name
        return json.loads(path.read_text()) if path.is_file() else None

    final = read("final.json")
    anatomy = read_anatomy(run)
    # Trials are compared by their position among completed ones: a trial lost in flight (FAIL)
    # takes a number, so numbers shift while the sequence of candidates must not.
    position = {t.number: i for i, t in enumerate(done)}

    def by_position(matrix: dict[str, Any] | None) -> Any:
        if not matrix:
            return matrix
        return {position.get(int(k), f"#{k}"): ({position.get(int(j), f"#{j}"): v for j, v in row.items()}
                                                 if isinstance(row, dict) else row) for k, row in matrix.items()}

    return {
        "candidates": [(t.user_attrs["arch"], t.value) for t in done],
        "retention": by_position({str(t): {str(j): v for j, v in row.items()}
                                  for t, row in retention_matrix(study).items()}),
        "anatomy members": sorted(by_position(anatomy) or {}),
        "final scores": sorted((r["arch"], r["final"]) for r in final["rows"]) if final else None,
    }


def run_once(cmd: list[str], log: Path, delay: float | None) -> int | None:
    """Run ``cmd``; SIGKILL it after ``delay`` seconds (None: let it finish). Returns its exit code,
    or None if it was killed."""
    with log.open("a") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        if delay is None:
            return proc.wait()
        try:
            return proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs to deliver. [20]")
    parser.add_argument("--trials", type=int, default=80,
                        help="Trials of the search: enough that it outlasts the kills. [80]")
    parser.add_argument("--max-delay", type=float, default=10.0,
                        help="Kill after a delay drawn uniformly in [0, this] seconds (start-up takes a few). [10]")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the delays. [0]")
    parser.add_argument("--quick", action="store_true", help="Up to 3 kills of a 12-trial search (a smoke run).")
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    parser.add_argument("--keep", type=Path, help="Keep the work folder here (default: a temporary one).")
    args = parser.parse_args(argv)
    if args.quick:
        args.kills, args.trials, args.max_delay = 3, 12, 8.0
    rng = random.Random(args.seed)
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-kill-"))
    work.mkdir(parents=True, exist_ok=True)
    data, log = work / "data", work / "search.log"

    reference_cmd = command(SPACE, work / "reference", data, args.trials)
    started = time.perf_counter()
    if run_once(reference_cmd, log, None) != 0:
        print(f"the uninterrupted search failed; see {log}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - started
    reference = outcome(work / "reference" / "kill")

    cmd, run = command(SPACE, work / "killed", data, args.trials), work / "killed" / "kill"
    lost, corrupt, kills, resumes, codes = 0, [], 0, 0, []
    while True:
        seen = complete_trials(run)
        delay = rng.uniform(0, args.max_delay) if kills < args.kills else None
        code = run_once(cmd, log, delay)
        resumes += 1
        if code is None:
            kills += 1
            now = complete_trials(run)
            lost += sum(1 for t in seen if t not in now)
            corrupt += unreadable(run)
            continue
        codes.append(code)
        if code != 0:
            print(f"a resumed search exited with {code}; see {log}", file=sys.stderr)
            return 1
        if len(complete_trials(run)) >= args.trials:
            break
    corrupt += [f"{p.relative_to(run)}: left behind" for p in run.rglob("*.tmp")]
    resumed = outcome(run)
    # Kills that caught a trial in flight leave it FAIL (the others landed between trials or in start-up).
    study = optuna.load_study(study_name="kill", storage=f"sqlite:///{run / 'study.db'}")
    in_flight = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)))
    differs = [key for key in reference if reference[key] != resumed[key]]
    report = {"kills": kills, "in_flight": in_flight, "runs": resumes, "trials": args.trials, "lost": lost,
              "corrupt": len(corrupt), "corrupt_files": corrupt, "differs": len(differs), "differing": differs,
              "uninterrupted_seconds": round(seconds, 1), "max_delay": args.max_delay, "seed": args.seed}
    print("| kills | of them mid-trial | runs | trials | lost completed trials | corrupt files "
          "| resumed ≠ uninterrupted |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {kills} | {in_flight} | {resumes} | {args.trials} | {lost} | {len(corrupt)} "
          f"| {len(differs)} of {len(reference)} |")
    if kills < args.kills:
        print(f"- the search finished after {kills} of {args.kills} kills: give more --trials")
    for item in corrupt:
        print(f"- corrupt: {item}")
    for key in differs:
        print(f"- differs: {key}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if lost == 0 and not corrupt and not differs else 1


if __name__ == "__main__":
    sys.exit(main())
