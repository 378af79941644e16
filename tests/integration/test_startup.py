"""`wpl-nas --help` and a mistyped flag answer without loading torch, optuna or matplotlib (seconds),
and the public names of `wpl_nas` load on first use with nothing else changed.

What is asserted is which modules a fresh process imports, never how long it takes: a timing
threshold fails on a busy machine and passes on a fast one whatever the code does
(benchmarks/bench_startup.py reports the times).
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import wpl_nas

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "optuna", "matplotlib", "tensorboard", "networkx")

#: Runs the ``wpl-nas`` command with the arguments given, then prints its exit code, the heavy modules
#: it imported, and OMP_WAIT_POLICY as wpl_nas.threads left it.
PROBE = """
import json, os, runpy, sys
sys.argv = ["wpl-nas", *sys.argv[1:]]
try:
    runpy.run_module("wpl_nas", run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as exc:
    code = exc.code
print(json.dumps({"exit_code": code, "modules": sorted(sys.modules),
                  "wait_policy": os.environ.get("OMP_WAIT_POLICY")}), file=sys.stderr)
"""


def _probe(*args: str) -> tuple[dict, str]:
    """The probe's findings (``loaded``: the heavy modules it imported), and what the command printed."""
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=300, cwd=ROOT)
    *output, last = proc.stderr.rstrip("\n").split("\n")
    probe = json.loads(last)
    modules = set(probe.pop("modules"))
    probe["loaded"] = [m for m in HEAVY if m in modules]
    return probe, proc.stdout + "\n".join(output)


@pytest.mark.parametrize("args", [["--help"], ["search", "--help"], ["strategies", "--help"], ["spaces", "--help"]])
def test_help_imports_none_of_the_heavy_modules(args):
    probe, output = _probe(*args)
    assert probe["exit_code"] == 0, output
    assert probe["loaded"] == [], probe
    assert "Usage: wpl-nas" in output


def test_a_bad_flag_value_is_refused_without_the_heavy_modules():
    probe, output = _probe("search", "--trials", "abc")
    assert probe["exit_code"] == 2 and "'abc' is not a valid integer" in output, output
    assert probe["loaded"] == [], probe


def test_a_strategy_s_flag_loads_the_strategies_and_is_read(tmp_path):
    # A fresh process (in this one the strategies are loaded already): the flag is found by loading them.
    probe, output = _probe("search", "--runs-dir", str(tmp_path), "--wpl-alpha", "-1")
    assert probe["exit_code"] == 2 and "wpl.alpha must be >= 0" in output, output
    assert "torch" in probe["loaded"]
    assert probe["wait_policy"] == "PASSIVE"  # wpl_nas.threads ran before torch loaded
    assert not any(tmp_path.iterdir())


def test_a_mistyped_flag_is_still_matched_against_every_flag():
    probe, output = _probe("search", "--wpl-alfa", "3")
    assert probe["exit_code"] == 2 and "No such option" in output and "--wpl-alpha" in output, output


def test_import_wpl_nas_imports_none_of_the_heavy_modules_and_sets_the_wait_policy_first():
    code = ("import json, os, sys; import wpl_nas; loaded = sorted(sys.modules); "
            "config = wpl_nas.SearchConfig(); "  # a config's strategy sections load the strategies, and torch
            "print(json.dumps([loaded, 'torch' in sys.modules, os.environ.get('OMP_WAIT_POLICY'), "
            "config == wpl_nas.SearchConfig.from_dict(config.to_dict())]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         check=True, env={k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"})
    loaded, torch_after_config, policy, round_trip = json.loads(out.stdout)
    assert not set(HEAVY) & set(loaded)
    assert torch_after_config and policy == "PASSIVE" and round_trip


def test_every_public_name_resolves_to_its_module_s_object():
    for name in wpl_nas.__all__:
        value = getattr(wpl_nas, name)
        assert value is getattr(importlib.import_module(wpl_nas._HOME[name]), name)
    namespace: dict = {}
    exec(f"from wpl_nas import {', '.join(wpl_nas.__all__)}", namespace)
    assert all(namespace[name] is getattr(wpl_nas, name) for name in wpl_nas.__all__)
    assert set(wpl_nas.__all__) <= set(dir(wpl_nas))
    assert wpl_nas.evaluation.RetainedPool is wpl_nas.RetainedPool  # a submodule, as after the eager imports
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        wpl_nas.nope  # noqa: B018


def test_the_names_for_type_checkers_are_the_lazy_ones():
    # __init__.py lists each name twice: imported under TYPE_CHECKING, and in _HOMES for run time.
    tree = ast.parse((ROOT / "wpl_nas" / "__init__.py").read_text())
    guarded = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    typed = {alias.name: node.module for node in guarded.body if isinstance(node, ast.ImportFrom)
             for alias in node.names}
    assert typed == wpl_nas._HOME
    assert sorted(typed) == sorted(wpl_nas.__all__)
