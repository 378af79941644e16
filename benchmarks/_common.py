"""Small pieces the benchmark scripts share (no torch import): the machine, and how a figure is shown."""

from __future__ import annotations

import math
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path

__all__ = ["cpu_name", "mean_std"]


def cpu_name() -> str:
    """The CPU's model name (Linux's ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mean_std(values: Sequence[float], spec: str) -> str:
    """Mean ± sample standard deviation of ``values`` (NaN left out) in format ``spec``; "n/a" if none."""
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return "n/a"
    text = format(statistics.fmean(kept), spec)
    return text if len(kept) < 2 else f"{text} ± {format(statistics.stdev(kept), spec.lstrip('+'))}"
