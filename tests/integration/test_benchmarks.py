"""The benchmark scripts run and report every figure they promise.

Their timings are read by people, never asserted: a timing threshold fails on a busy machine and
passes on a fast one whatever the code does. What is asserted is the structure of the report.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str, json_out: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(ROOT / "benchmarks" / script), "--quick", *args, "--json", str(json_out)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


def _registered() -> list[str]:
    """The strategies a fresh ``import wpl_nas`` registers: what the benchmark sees (this process may
    have imported more strategy modules through other tests)."""
    out = subprocess.run([sys.executable, "-c", "import json, wpl_nas; print(json.dumps(wpl_nas.STRATEGIES.names()))"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, check=True)
    return json.loads(out.stdout)


@pytest.mark.slow
def test_bench_step_quick_reports_supernet_vs_standalone(tmp_path):
    out = tmp_path / "step.json"
    proc = _run("bench_step.py", "--threads", "1", json_out=out)
    figures = json.loads(out.read_text())
    rows = figures["results"]
    assert rows and {r["comparison"] for r in rows} == {"supernet/standalone"}
    assert all(_positive(r["ratio"]) and _positive(r["baseline_ms"]) for r in rows)
    assert "| supernet/standalone |" in proc.stdout


@pytest.mark.slow
def test_bench_strategies_quick_reports_every_registered_strategy(tmp_path):
    out = tmp_path / "strategies.json"
    proc = _run("bench_strategies.py", json_out=out)
    figures = json.loads(out.read_text())
    names = _registered()
    assert figures["environment"]["strategies"] == names
    assert "naive" in names

    # 1. Step overhead: a row per strategy (per form, plus autograd, for the quadratic family).
    step = figures["step"]
    assert not step["failures"]
    rows = step["rows"]
    assert {r["strategy"] for r in rows} == set(names) - {"naive"}
    assert all(_positive(r["ratio"]) and _positive(r["baseline_ms"]) and _positive(r["variant_ms"]) for r in rows)
    assert all(r["finite_after_run"] for r in rows)
    quadratic = {r["strategy"] for r in rows if r["form"] is not None}
    assert {"wpl", "ewc", "si"} <= quadratic
    for name in quadratic:
        assert {r["form"] for r in rows if r["strategy"] == name} == {"proximal", "gradient", "autograd"}
        assert all(r["live"] for r in rows if r["strategy"] == name), f"{name}'s penalty is not live"
    versus = step["versus_autograd"]
    assert {(r["strategy"], r["form"]) for r in versus} == {(q, f) for q in quadratic for f in ("proximal", "gradient")}
    assert all(_positive(r["ratio"]) for r in versus)

    # 2. Importance: vmap and loop Fishers agree.
    importance = figures["importance"]
    assert importance and all(_positive(r["ratio"]) and r["agree"] for r in importance)

    # 3. Memory: a row per strategy; tensors held do not change with the number of candidates
    # (HAT's protected set may grow up to its capacity).
    memory = {r["strategy"]: r for r in figures["memory"]}
    assert set(memory) == set(names)
    for name, r in memory.items():
        assert "error" not in r, f"{name}: {r.get('error')}"
        assert _positive(r["ratio"])
        first, last = (r["bytes"][str(c)] for c in (r["counts"][0], r["counts"][-1]))
        if name != "hat":
            assert (last["state"], last["held"]) == (first["state"], first["held"]), name
            assert r["verdict"] != "grows", name

    for heading in ("### Step overhead", "### Importance estimation", "### Memory"):
        assert heading in proc.stdout
    for name in names:
        assert f"| {name} |" in proc.stdout


@pytest.mark.slow
def test_bench_quality_quick_pairs_each_strategy_with_naive(tmp_path):
    out = tmp_path / "quality.json"
    proc = _run("bench_quality.py", "--runs-dir", str(tmp_path / "runs"), json_out=out)
    figures = json.loads(out.read_text())
    rows = {r["strategy"]: r for r in figures["rows"]}
    assert set(rows) == {"naive", "wpl"}
    for row in rows.values():
        assert row["seeds"] == 1
        assert 0.0 <= row["a_lowest"]["mean"] <= row["a_before"]["mean"] <= 1.0
    # B's cost is measured against naive's B of the same seed, so naive's own is exactly zero.
    assert rows["naive"]["b_points"]["mean"] == 0.0
    assert math.isclose(rows["wpl"]["b_points"]["mean"],
                        100.0 * (rows["wpl"]["b_final"]["mean"] - rows["naive"]["b_final"]["mean"]))
    assert "| 3 | wpl |" in proc.stdout
    assert (tmp_path / "runs" / "bench-quality" / "results.md").is_file()


@pytest.mark.slow
def test_bench_sampler_quick_compares_both_samplers(tmp_path):
    out = tmp_path / "sampler.json"
    proc = _run("bench_sampler.py", json_out=out)
    rows = json.loads(out.read_text())["rows"]
    assert [r["sampler"] for r in rows] == ["tpe", "forgetting-aware"]
    for r in rows:
        assert 0.0 <= r["best_standalone"] <= 1.0 and 0.0 <= r["retained_mean"] <= 1.0
        assert r["distinct"] >= 1 and r["mean_params"] > 0
    assert "| forgetting-aware |" in proc.stdout


@pytest.mark.slow
def test_bench_language_quick_reports_naive_and_wpl_per_seed(tmp_path):
    out = tmp_path / "language.json"
    proc = _run("bench_language.py", json_out=out)
    rows = json.loads(out.read_text())["results"]
    assert [(r["seed"], r["strategy"]) for r in rows] == [(0, "naive"), (0, "wpl")]
    assert all(r["best"] > 1.0 and math.isfinite(r["forgetting_mean"]) for r in rows)
    assert "| 0 | wpl |" in proc.stdout
