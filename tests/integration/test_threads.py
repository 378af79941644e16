"""Threads on every command that trains or scores: one default, one helper, seeded runs that repeat."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from conftest import search_tiny

import wpl_nas
from wpl_nas.cli import cli
from wpl_nas.threads import cores

#: Every command that trains or scores, with the arguments it needs besides a run folder.
COMMANDS = {"rank": ["--seeds", "1", "--archs", "2", "--epochs", "1", "--no-progress"],
            "retrain": ["--epochs", "1", "--no-progress"], "anatomy": [], "export": [], "select": []}


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run_dir(tiny_space_file, data_dir, tmp_path_factory):
    """A finished 3-trial search (one thread, recorded in its config.yaml)."""
    config = wpl_nas.SearchConfig(space=str(tiny_space_file), data_dir=str(data_dir),
                                  runs_dir=str(tmp_path_factory.mktemp("runs")), study_name="threads", trials=3,
                                  epochs=1, batch_size=256, device="cpu", eval_samples=200, sampler="random")
    return wpl_nas.run_search(config, progress=False, command=["test"]).run_dir


def _values(result: wpl_nas.SearchResult) -> list[float]:
    return [t.value for t in result.study.get_trials()]


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
def test_a_seeded_search_repeats_exactly_on_the_same_threads(tiny_space_file, data_dir, tmp_path, threads,
                                                             restore_threads):
    first = search_tiny(tiny_space_file, data_dir, tmp_path / "a", threads=threads, seed=3)
    again = search_tiny(tiny_space_file, data_dir, tmp_path / "b", threads=threads, seed=3)
    assert torch.get_num_threads() == threads
    assert _values(first) == _values(again)  # bit for bit, not approximately
    assert [t.user_attrs["arch"] for t in first.study.get_trials()] == \
        [t.user_attrs["arch"] for t in again.study.get_trials()]


@pytest.mark.slow
def test_a_search_prints_the_threads_it_uses_in_one_line(tiny_space_file, data_dir, tmp_path, restore_threads):
    args = ["search", "--no-progress", "--space", str(tiny_space_file), "--data-dir", str(data_dir),
            "--runs-dir", str(tmp_path), "--trials", "1", "--epochs", "1", "--batch-size", "256",
            "--eval-samples", "200", "--device", "cpu"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("CPU threads:")]
    assert line.startswith(f"CPU threads: 1 of {cores()} core") and "--threads" in line
    assert wpl_nas.load_run(tmp_path / "tiny1d-wpl").config.threads == 1  # the default, recorded


@pytest.mark.parametrize("bad", [["--space", "no-such-space"], ["--strategy", "no-such-strategy"],
                                 ["--sampler", "no-such-sampler"]])
def test_a_search_refused_by_its_checks_prints_the_error_and_no_threads_line(bad, tmp_path):
    """These names pass the config's own validation and are refused by the search's set-up (exit 2):
    the threads line would say the search had started."""
    result = CliRunner().invoke(cli, ["search", "--no-progress", "--runs-dir", str(tmp_path), *bad])
    assert result.exit_code == 2, result.output
    assert bad[1] in result.output and "Error:" in result.output, result.output
    assert "CPU threads:" not in result.output, result.output
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("command", [*COMMANDS, "search", "forgetting"])
def test_every_command_that_trains_or_scores_has_threads_defaulting_to_one(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "--threads" in result.output and "[default: 1]" in result.output.split("--threads", 1)[1]


@pytest.mark.parametrize("command", [*COMMANDS, "search", "forgetting"])
def test_a_negative_thread_count_is_refused_with_exit_2_and_one_line(command, tmp_path):
    args = [command, str(tmp_path)] if command in COMMANDS else [command, "--runs-dir", str(tmp_path)]
    result = CliRunner().invoke(cli, [*args, "--threads", "-1"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "-1" in errors[0] and "Traceback" not in result.output, result.output
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_command_runs_on_its_own_threads_not_the_runs(run_dir, command, restore_threads):
    """The run recorded one thread; --threads 2 holds for the whole command (the scoring included)."""
    result = CliRunner().invoke(cli, [command, str(run_dir), "--threads", "2", *COMMANDS[command]])
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == 2
