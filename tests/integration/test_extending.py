"""A new strategy is one file: imported, it has its config section, its flags and its row in `wpl-nas
strategies`, and it runs a search from the command line, with no other edit."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from click.testing import CliRunner

import wpl_nas
from wpl_nas.cli import cli
from wpl_nas.strategies import STRATEGIES

EXAMPLE = Path(__file__).resolve().parents[1] / "extending" / "example_strategy.py"

PROBE = '''\
from dataclasses import dataclass

from wpl_nas.configs import Options, opt
from wpl_nas.strategies.base import Strategy
from wpl_nas.strategies.registry import STRATEGIES


@dataclass
class ProbeOptions(Options):
    """Options of a strategy nobody edited anything else for."""

    positive = ("width",)

    width: int = opt(3, "How wide the probe is.")


@STRATEGIES.register("probe-new")
class ProbeStrategy(Strategy):
    """A probe: does nothing, with one option."""

    Options = ProbeOptions
'''


@pytest.fixture
def import_strategy_file() -> Iterator[Callable[[Path], ModuleType]]:
    """Import a strategy file as a plug-in would be; forget what it registered afterwards."""
    before, modules = set(STRATEGIES.names()), []

    def load(path: Path) -> ModuleType:
        name = f"_test_strategy_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        modules.append(name)
        spec.loader.exec_module(module)
        return module

    yield load
    for name in set(STRATEGIES.names()) - before:
        STRATEGIES.unregister(name)
    for name in modules:
        sys.modules.pop(name, None)


def test_a_new_strategy_file_gets_its_section_flags_and_listing(tmp_path, import_strategy_file):
    path = tmp_path / "probe_strategy.py"
    path.write_text(PROBE)
    probe = import_strategy_file(path)
    for kind in (wpl_nas.SearchConfig, wpl_nas.LabConfig):
        config = kind.from_dict({"probe_new": {"width": 5}})
        assert config.sections["probe_new"] == probe.ProbeOptions(width=5) == config.strategy_options["probe-new"]
        assert kind().sections["probe_new"] == probe.ProbeOptions()
    for command in ("search", "forgetting"):  # the flag is read and checked: nothing runs
        result = CliRunner().invoke(cli, [command, "--runs-dir", str(tmp_path / "runs"), "--probe-new-width", "0"])
        assert result.exit_code == 2 and "probe_new.width must be > 0, but got width=0" in result.output, result.output
    listing = CliRunner().invoke(cli, ["strategies"]).output
    assert any(line.split()[:2] == ["probe-new", "none"] for line in listing.splitlines()), listing
    shown = CliRunner().invoke(cli, ["strategies", "show", "probe-new"]).output
    assert "--probe-new-width INTEGER" in shown and "probe_new: {option: value}" in shown, shown


def test_the_registry_forgets_a_strategy_when_told(tmp_path, import_strategy_file):
    path = tmp_path / "probe_strategy.py"
    path.write_text(PROBE)
    import_strategy_file(path)
    STRATEGIES.unregister("probe-new")
    assert "probe_new" not in wpl_nas.SearchConfig().sections
    result = CliRunner().invoke(cli, ["search", "--probe-new-width", "5"])
    assert result.exit_code == 2 and "No such option '--probe-new-width'" in result.output


def test_the_readme_example_strategy_runs_a_search_from_the_command_line(tiny_space_file, data_dir, tmp_path,
                                                                         import_strategy_file):
    import_strategy_file(EXAMPLE)
    args = ["search", "--no-progress", "--strategy", "example-l2", "--example-l2-lam", "0.5",
            "--space", str(tiny_space_file), "--data-dir", str(data_dir), "--runs-dir", str(tmp_path),
            "--study-name", "l2", "--trials", "2", "--epochs", "1", "--batch-size", "256", "--train-samples", "512",
            "--eval-samples", "200", "--device", "cpu", "--threads", "1", "--sampler", "random"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((tmp_path / "l2" / "config.yaml").read_text())
    assert saved["strategy"] == "example-l2" and saved["example_l2"] == {"lam": 0.5}
    again = CliRunner().invoke(cli, args)  # resumes: the run's options, the example's included, are unchanged
    assert again.exit_code == 0 and "changed options" not in again.output, again.output
