"""The benchmark script runs (its figures are read by people, never asserted as timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_step_quick_runs_and_reports_every_comparison(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_step.py"), "--quick", "--threads", "1",
                           "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "supernet/standalone" in proc.stdout and "wpl-proximal/naive" in proc.stdout
    figures = json.loads(out.read_text())
    assert figures
