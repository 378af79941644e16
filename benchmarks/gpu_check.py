#!/usr/bin/env python
"""The GPU check: one short command for a lent GPU, printing a summary and writing JSON results.

Four parts, each a subprocess with its own time limit (a part that fails or hangs is recorded
and the next one runs), in order of what they tell:

1. ``tests``: the fast-path tests (``tests/integration/test_fast_path.py``: bf16, fp16 with its
   gradient scaler, a resumed fp16 search, the replay strategies' scaled backward, channels_last)
   on the device, through ``WPL_NAS_TEST_DEVICE``.
2. ``step``: the NB201 supernet's training step on CIFAR-10-shaped batches (256 × 3×32×32) against
   the same stand-alone network in plain PyTorch (``bench_step.py``: warm-up, then each step timed
   after ``torch.cuda.synchronize``); images/s ratio, target ≤ 1.05×.
3. ``precision``: fp32 vs bf16 (and fp16), channels_last off and on, of the trainer's own step on
   NB201 at batch 256 (``bench_precision.py``).
4. ``search``: the wall time of a 50-candidate NB201 search (``--steps 100`` per candidate, the
   device's default precision and memory format) on a synthetic CIFAR-10-shaped data set
   registered here (10,000 training images; no download): total and per trial, and the share of it
   that is candidate training.

A fifth part, ``compile`` (``--parts ...,compile``; 150 s more), measures ``torch.compile`` per
candidate with CUDA graphs (``bench_compile.py --mode reduce-overhead``): compile time against the
per-step saving on NB201 at batch 256.

Usage::

    python benchmarks/gpu_check.py --out gpu-results              # on a CUDA machine: < 8 minutes
    python benchmarks/gpu_check.py --smoke --device cpu --out gpu-smoke  # every part, tiny, on a CPU

Writes ``<out>/gpu_check.json`` (rewritten after every part, so a stopped run keeps what it
measured) and each part's own JSON and log next to it. Exit status 0 unless the script itself
fails: a failed part is reported in the summary and the JSON, not by the exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: (name, seconds allowed) of each part: the default four take 450 s at most, within the 8-minute
#: target; ``compile`` (torch.compile and CUDA graphs per candidate, bench_compile.py) only when asked.
LIMITS = {"tests": 120, "step": 90, "precision": 60, "search": 180, "compile": 150}
DEFAULT_PARTS = ("tests", "step", "precision", "search")
#: The target of the NB201 supernet's step against the stand-alone network's on a GPU (issue 15).
GPU_STEP_TARGET = 1.05
#: Images of the synthetic CIFAR-10-shaped training split of the ``search`` part (smoke: 256).
SEARCH_IMAGES = 10_000


# --- the parts ---------------------------------------------------------------------------------
def commands(args: argparse.Namespace, out: Path) -> dict[str, list[str]]:
    py, dev = sys.executable, args.device
    smoke = args.smoke
    tests = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/integration/test_fast_path.py",
             f"--junitxml={out / 'tests.xml'}"]
    if smoke:  # the device-dependent ones, cheap
        tests += ["-k", "bf16_on_a_cpu_trains or replay_gradient or non_finite or channels_last_matches"]
    batch = "8" if smoke else "256"
    step = [py, str(HERE / "bench_step.py"), "--device", dev, "--spaces", "nb201", "--batch-size", batch,
            "--json", str(out / "step.json")]
    if dev == "cpu":  # two OpenMP threads on a busy CPU wait on each other: one thread, as the search's default
        step += ["--threads", "1"]
    step += ["--quick", "--archs", "1", "--pool", "2"] if smoke else ["--archs", "3", "--repeats", "60",
                                                                       "--warmup", "10", "--budget", "20"]
    precision = [py, str(HERE / "bench_precision.py"), "--device", dev, "--space", "nb201", "--channels-last",
                 "--batch-size", batch, "--json", str(out / "precision.json")]
    precision += ["--quick", "--repeats", "4"] if smoke else ["--precisions", "fp32,bf16,fp16", "--repeats", "40",
                                                              "--warmup", "10"]
    search = [py, str(Path(__file__).resolve()), "_search", "--device", dev, "--out", str(out)]
    search += ["--trials", "3", "--steps", "2", "--images", "256"] if smoke else []
    compile_ = [py, str(HERE / "bench_compile.py"), "--device", dev, "--spaces", "nb201", "--nb201-batch", batch,
                "--json", str(out / "compile.json")]
    compile_ += ["--quick"] if smoke else ["--mode", "reduce-overhead" if dev.startswith("cuda") else "default",
                                           "--archs", "2", "--repeats", "40", "--budget", "15"]
    return {"tests": tests, "step": step, "precision": precision, "search": search, "compile": compile_}


def run_part(name: str, command: list[str], *, limit: float, out: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run one part, its output to ``<out>/<name>.log``; what it wrote to ``<out>/<name>.json`` comes back."""
    log = out / f"{name}.log"
    start = time.perf_counter()
    with log.open("w") as file:
        try:
            rc: int | str = subprocess.run(command, cwd=ROOT, env=env, stdout=file, stderr=subprocess.STDOUT,
                                           timeout=limit, check=False).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    record: dict[str, Any] = {"status": "ok" if rc == 0 else "failed", "returncode": rc,
                              "seconds": round(time.perf_counter() - start, 1), "limit_s": limit,
                              "command": " ".join(command), "log": log.name,
                              "tail": log.read_text(errors="replace").splitlines()[-15:]}
    result = out / f"{name}.json"
    if result.exists():
        try:
            record["results"] = json.loads(result.read_text())
        except ValueError as exc:
            record["results_error"] = str(exc)
    return record


def headline(name: str, record: dict[str, Any]) -> str:
    """One line of the summary: the part's status and its key figures."""
    results = record.get("results") or {}
    text = f"{name:<10} {record['status']:<7} {record['seconds']:6.1f} s"
    if name == "tests":
        text += "  " + next((line for line in reversed(record["tail"]) if " passed" in line or " failed" in line
                             or " error" in line), "(no pytest summary)").strip("= ")
    elif name == "step" and results:
        for s in results.get("summary", []):
            text += (f"  supernet/standalone {s['space']}: geomean x{s['geomean_ratio']:.3f}, worst "
                     f"x{s['worst_ratio']:.3f} (target on a GPU <= {GPU_STEP_TARGET})")
    elif name == "precision" and results:
        text += "  " + ", ".join(f"{r['variant']} {1e3 / r['variant_ms']:.1f} steps/s (x{r['ratio']:.2f})"
                                 for r in results.get("results", []))
    elif name == "compile" and results:
        text += "  " + ", ".join(f"{r['space']} {r['arch_label']}: compile {r['compile_overhead_s']:.1f} s, "
                                 f"x{r['ratio']:.2f} per step, break-even {r['break_even_steps']:.0f} steps"
                                 for r in results.get("results", []))
    elif name == "search" and results:
        text += (f"  {results['trials']} candidates x {results['steps']} steps: {results['wall_s']:.1f} s "
                 f"({results['per_trial_s']:.2f} s/trial, training {100 * results['training_share']:.0f}%)"
                 + ("" if results.get("finished") else f" [stopped early: {results['trials_asked']} asked]"))
    return text


def environment(device: str) -> dict[str, Any]:
    """The machine, without importing torch here (a broken CUDA install then still gets a report)."""
    probe = ("import json, sys, torch; d = torch.device(sys.argv[1]); cuda = d.type == 'cuda' and "
             "torch.cuda.is_available(); print(json.dumps({'torch': torch.__version__, 'cuda_available': "
             "torch.cuda.is_available(), 'device_name': torch.cuda.get_device_name(d) if cuda else None, "
             "'bf16_supported': torch.cuda.is_bf16_supported() if cuda else None}))")
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(), "device": device,
                            "cpu_count": os.cpu_count()}
    try:
        done = subprocess.run([sys.executable, "-c", probe, device], capture_output=True, text=True, timeout=120,
                              check=True)
        info.update(json.loads(done.stdout.strip().splitlines()[-1]))
    except (subprocess.SubprocessError, ValueError, IndexError) as exc:
        info["probe_error"] = str(exc)
    return info


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="torch device [default: %(default)s]")
    p.add_argument("--smoke", action="store_true", help="every part, tiny (a CPU runs it in a few minutes)")
    p.add_argument("--out", type=Path, default=Path("gpu-check"), help="results folder [default: %(default)s]")
    p.add_argument("--parts", default=",".join(DEFAULT_PARTS),
                   help=f"comma-separated parts, of {', '.join(LIMITS)} [default: %(default)s]")
    args = p.parse_args(argv)
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = [x for x in parts if x not in LIMITS]
    if unknown:
        p.error(f"unknown parts {unknown}; valid choices: {', '.join(LIMITS)}")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "WPL_NAS_TEST_DEVICE": args.device, "PYTHONPATH": os.pathsep.join(
        x for x in (str(ROOT), os.environ.get("PYTHONPATH", "")) if x)}
    report: dict[str, Any] = {"environment": environment(args.device), "smoke": args.smoke, "parts": {}}
    print(f"# gpu_check: {report['environment']}", flush=True)
    start = time.perf_counter()
    todo = commands(args, out)
    for name in parts:
        # A smoke run on a busy CPU gets three times as long: the limits are sized for the GPU.
        limit = LIMITS[name] * (3 if args.smoke else 1)
        print(f"# {name}: {' '.join(todo[name])} (limit {limit} s)", flush=True)
        record = run_part(name, todo[name], limit=limit, out=out, env=env)
        report["parts"][name] = record
        report["seconds"] = round(time.perf_counter() - start, 1)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
        print(headline(name, record), flush=True)
    print(f"\n## gpu_check summary ({report['environment'].get('device_name') or args.device}; "
          f"torch {report['environment'].get('torch')}; {report['seconds']} s)")
    for name, record in report["parts"].items():
        print(headline(name, record))
    print(f"\nJSON: {out / 'gpu_check.json'}")
    return 0


# --- part 4, run in its own process -------------------------------------------------------------
def search_part(argv: Sequence[str]) -> int:
    """A search of NB201 on a synthetic CIFAR-10-shaped data set; writes ``<out>/search.json``."""
    p = argparse.ArgumentParser(prog="gpu_check.py _search")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--images", type=int, default=SEARCH_IMAGES)
    args = p.parse_args(argv)
    import tempfile
    import threading

    import optuna
    import torch

    import wpl_nas
    from wpl_nas.training.precision import resolve_channels_last, resolve_precision

    @wpl_nas.register_dataset("cifar10-shaped")
    def cifar10_shaped(*, val_fraction: float, seed: int) -> wpl_nas.DataBundle:
        # Learnable, not noise: each class adds its own fixed pattern, so scores rise above chance.
        g = torch.Generator().manual_seed(0)
        n = args.images + args.images // 5
        labels = torch.randint(0, 10, (n,), generator=g)
        patterns = torch.randn(10, 3, 32, 32, generator=g)
        images = torch.randn(n, 3, 32, 32, generator=g) + 0.5 * patterns[labels]
        return wpl_nas.DataBundle.from_tensors(images[:args.images], labels[:args.images],
                                               x_test=images[args.images:], y_test=labels[args.images:],
                                               val_fraction=val_fraction, seed=seed)

    runs = Path(tempfile.mkdtemp(prefix="gpu-check-runs-"))
    config = wpl_nas.SearchConfig(space="nb201", dataset="cifar10-shaped", device=args.device, trials=args.trials,
                                  steps=args.steps, runs_dir=str(runs), study_name="gpu-check",
                                  eval_samples=min(1000, args.images // 5))
    fixed = {"steps": args.steps, "images": args.images, "trials_asked": args.trials,
             "precision": resolve_precision(config.precision, args.device),
             "channels_last": resolve_channels_last(config.channels_last, args.device)}
    start = time.perf_counter()

    def write(done: bool) -> None:
        """The figures so far, from the study itself: a search stopped by the time limit still reports."""
        db = runs / "gpu-check" / "study.db"
        trials = []
        if db.exists():  # never create it: the search would then find a study file it did not write
            try:
                study = optuna.load_study(study_name="gpu-check", storage=f"sqlite:///{db}")
                trials = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
            except Exception:  # progress is best effort: the study may be half created
                trials = []
        wall = time.perf_counter() - start
        training = sum(float(t.user_attrs.get("seconds", 0.0)) for t in trials)
        values = [t.value for t in trials if t.value is not None]
        figures = {**fixed, "finished": done, "trials": len(trials), "wall_s": wall,
                   "per_trial_s": wall / max(len(trials), 1), "training_s": training,
                   "training_share": training / wall if wall > 0 else 0.0, "best_value": max(values, default=None)}
        (args.out / "search.json").write_text(json.dumps(figures, indent=2))

    stop = threading.Event()

    def report_every(seconds: float) -> None:
        while not stop.wait(seconds):
            write(False)

    # The search runs in the main thread (it installs signal handlers); progress is written beside it.
    threading.Thread(target=report_every, args=(10.0,), daemon=True).start()
    wpl_nas.run_search(config, progress=False, command=["gpu_check.py", "_search"])
    stop.set()
    write(True)
    print((args.out / "search.json").read_text())
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_search":
        sys.exit(search_part(sys.argv[2:]))
    sys.exit(main())
