"""The thread policy (wpl_nas.threads): one default for every command, applied by one helper, and
OpenMP's idle threads told to sleep rather than spin."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import wpl_nas
from wpl_nas.lab import LabConfig
from wpl_nas.threads import DEFAULT_THREADS, cores, threads_line, use_threads


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_every_configuration_defaults_to_one_thread():
    assert DEFAULT_THREADS == 1
    assert wpl_nas.SearchConfig().threads == LabConfig().threads == DEFAULT_THREADS


def test_use_threads_applies_the_count_and_0_means_one_per_core(restore_threads):
    assert use_threads(1) == torch.get_num_threads() == 1
    assert use_threads(0) == torch.get_num_threads() == cores()
    assert use_threads(1) == 1


def test_a_negative_thread_count_is_refused_naming_it(restore_threads):
    with pytest.raises(wpl_nas.ConfigError, match=r"threads must be >= 0 .*threads=-2"):
        use_threads(-2)
    with pytest.raises(wpl_nas.ConfigError, match="threads=-1"):
        wpl_nas.SearchConfig(threads=-1).validate()


def test_the_threads_line_says_how_many_of_how_many_cores():
    assert threads_line(1).startswith(f"CPU threads: 1 of {cores()} core")
    assert "\n" not in threads_line(cores())


def _wait_policy(code: str, **env: str) -> str:
    """OMP_WAIT_POLICY as a fresh interpreter sees it after running ``code``."""
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", f"{code}; import os; print(os.environ.get('OMP_WAIT_POLICY'))"],
                         capture_output=True, text=True, check=True, env={**clean, **env}, timeout=120)
    return out.stdout.strip()


@pytest.mark.slow
def test_importing_wpl_nas_makes_openmp_wait_passively_unless_told_otherwise():
    assert _wait_policy("import wpl_nas") == "PASSIVE"  # set before torch (and its OpenMP) loads
    assert _wait_policy("import wpl_nas", OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"  # the user's choice stands
    assert _wait_policy("import wpl_nas", GOMP_SPINCOUNT="1000") == "None"
    assert _wait_policy("import torch; import wpl_nas") == "None"  # too late to matter: left alone
