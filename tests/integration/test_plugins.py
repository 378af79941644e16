"""Plugins: a package installed next to wpl-nas adds a dataset, a space kind and a space through
entry points, and ``wpl-nas search`` uses them by name; a plugin that does not import is a
warning that names it, not a traceback.

The example plugin (``tests/extending/plugin/``) is pip-installed into a fresh virtual environment
that sees this environment's packages through a ``.pth`` file, so nothing is downloaded and
wpl-nas and torch are not installed again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import optuna
import pytest
import yaml

PLUGIN = Path(__file__).resolve().parents[1] / "extending" / "plugin"


def _run(args: list[str], *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def _venv_seeing_this_environment(root: Path, env: dict[str, str]) -> tuple[Path, Path]:
    """A new virtual environment whose interpreter also finds this one's packages (wpl-nas, torch,
    pip, setuptools): ``(its python, its site-packages)``."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=root, env=env).stdout.strip())
    # addsitedir (not a plain path line) so this environment's own .pth files run too: the
    # editable install of wpl-nas is one.
    here = sysconfig.get_paths()["purelib"]
    (site / "_this_environment.pth").write_text(f"import site; site.addsitedir({here!r})\n")
    return python, site


def _fake_broken_plugin(site: Path) -> None:
    """The metadata of an installed package whose dataset entry point names a module that is missing."""
    info = site / "wpl_broken_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wpl-broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[wpl_nas.datasets]\nbroken = wpl_broken_plugin_missing\n")


@pytest.mark.slow
def test_an_installed_plugin_adds_a_dataset_a_space_kind_and_a_space(tmp_path: Path) -> None:
    # The checkout must not be importable from the working directory: wpl_nas comes from the install.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env["PYTHONNOUSERSITE"] = "1"
    python, site = _venv_seeing_this_environment(tmp_path / "venv", env)
    source = tmp_path / "plugin"  # built from a copy: pip writes build/ and egg-info/ beside the sources
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    _run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
          "--disable-pip-version-check", str(source)], cwd=tmp_path, env=env)
    _fake_broken_plugin(site)

    runs = tmp_path / "runs"
    proc = _run([str(python), "-m", "wpl_nas", "search", "--no-progress", "--dataset", "demo-blobs", "--space",
                 "demo-chain", "--trials", "2", "--epochs", "1", "--batch-size", "64", "--device", "cpu",
                 "--threads", "1", "--data-dir", str(tmp_path / "data"), "--runs-dir", str(runs),
                 "--study-name", "plugin"], cwd=tmp_path, env=env)

    assert "best architecture   layer1=" in proc.stdout
    config = yaml.safe_load((runs / "plugin" / "config.yaml").read_text())
    assert (config["dataset"], config["space"]) == ("demo-blobs", "demo-chain")
    study = optuna.load_study(study_name="plugin", storage=f"sqlite:///{runs / 'plugin' / 'study.db'}")
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for t in trials:  # the plugin kind's choices, scored on the plugin's four classes
        assert set(t.params) == {"layer1", "layer2"} and set(t.params.values()) <= {"relu", "tanh", "identity"}
        assert 0.25 < t.value <= 1.0
    # The broken plugin: one warning naming its package and entry point, and the run went on.
    assert "PluginWarning: plugin 'broken' (entry point 'wpl_broken_plugin_missing' in group " \
           "'wpl_nas.datasets' of package 'wpl-broken-plugin') failed to load (ModuleNotFoundError" in proc.stderr
    assert "Traceback" not in proc.stderr
