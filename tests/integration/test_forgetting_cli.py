"""End to end: `wpl-nas forgetting` on a tiny budget, and its refusals of bad input."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
from click.testing import CliRunner
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from wpl_nas.cli import cli
from wpl_nas.lab import SCENARIOS, load_lab_config


@pytest.fixture
def base_args(data_dir, mnist1d, tmp_path) -> list[str]:
    # `mnist1d` makes sure the data set is generated (once per session) in `data_dir`.
    return ["forgetting", "--no-progress", "--data-dir", str(data_dir), "--runs-dir", str(tmp_path / "runs"),
            "--device", "cpu"]


TINY = ["--channels", "8", "--train-samples", "256", "--epochs", "1", "--eval-samples", "128", "--shared", "2"]


def test_cli_two_model_writes_the_run_folder(base_args, tmp_path):
    result = CliRunner().invoke(cli, [*base_args, "--scenario", "two-model", "--strategies", "naive,wpl", *TINY,
                                      "--wpl-alpha", "300"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "two-model-mnist1d"
    assert "| strategy | shared | a_fraction | A before | A after |" in result.output
    assert f"tensorboard --logdir {run_dir / 'tb'}" in result.output
    for name in ("config.yaml", "results.csv", "results.md", "seeds.csv", "retention.png"):
        assert (run_dir / name).is_file(), name
    rows = list(csv.DictReader((run_dir / "results.csv").read_text().splitlines()))
    assert [(r["strategy"], r["shared"]) for r in rows] == [("naive", "2"), ("wpl", "2")]
    for strategy in ("naive", "wpl"):
        assert (run_dir / "retention" / strategy / "shared2" / "seed0.json").is_file()
        events = EventAccumulator(str(run_dir / "tb" / strategy / "shared2" / "seed0"))
        events.Reload()
        assert {"retained/first_acc", "final/forgetting_mean", "final/last_acc"} <= set(events.Tags()["scalars"])
    saved = load_lab_config(run_dir / "config.yaml")
    assert saved.sections["wpl"].alpha == 300.0 and saved.strategies == "naive,wpl" and saved.shared == "2"
    assert "command:" in (run_dir / "config.yaml").read_text()


def test_cli_rerun_from_the_saved_config_replaces_the_outputs(base_args, tmp_path):
    args = [*base_args, "--strategies", "naive", *TINY]
    assert CliRunner().invoke(cli, args, catch_exceptions=False).exit_code == 0
    run_dir = tmp_path / "runs" / "two-model-mnist1d"
    first = (run_dir / "results.csv").read_text()
    again = CliRunner().invoke(cli, ["forgetting", "--no-progress", "--config", str(run_dir / "config.yaml")],
                               catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert (run_dir / "results.csv").read_text().split("\n")[1].split(",")[:9] == first.split("\n")[1].split(",")[:9]
    assert len(list((run_dir / "tb" / "naive" / "shared2" / "seed0").iterdir())) == 1  # old events removed


def test_bad_input_exits_2_names_the_value_and_writes_nothing(base_args, tmp_path):
    malformed = tmp_path / "malformed.yaml"
    malformed.write_text("epochs: [1, 2\n")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("candiates: 3\n")
    cases = [
        (["--scenario", "nope"], ["'nope'", f"valid choices: {', '.join(SCENARIOS.names())}"]),
        (["--strategies", "naive,nieve"], ["'nieve'", "did you mean 'naive'", "valid choices:", "wpl"]),
        (["--strategies", "naive,,wpl"], ["empty item"]),
        (["--dataset", "imagenet"], ["'imagenet'", "mnist1d", "cifar10"]),
        (["--scenario", "split", "--tasks", "3"], ["tasks=3", "valid choices: 2, 5, 10"]),
        (["--scenario", "split", "--space", "nope"], ["'nope'", "mnist1d", "nb201"]),
        (["--scenario", "split", "--arch", "|conv_5~0|"], ["|conv_5~0|", "does not fit space 'mnist1d'"]),
        (["--scenario", "sequence", "--candidates", "1"], ["candidates must be >= 2", "candidates=1"]),
        (["--tasks", "5"], ["'tasks'", "does not apply to scenario 'two-model'", "split, permuted"]),
        (["--shared", "5"], ["shared", "valid choices: 1, 2, 3, 4"]),
        (["--a-fraction", "2"], ["a_fraction", "(0, 1]"]),
        (["--epochs", "0"], ["epochs must be > 0"]),
        (["--epochs", "zero"], ["'zero' is not a valid integer"]),
        (["--seeds", "-1"], ["seeds must be > 0"]),
        (["--wpl-form", "implicit"], ["'implicit'", "proximal, gradient"]),
        (["--device", "tpu"], ["'tpu'", "cpu"]),
        (["--config", str(malformed)], ["malformed YAML", str(malformed)]),
        (["--config", str(unknown)], ["'candiates'", "did you mean 'candidates'"]),
    ]
    for extra, needles in cases:
        result = CliRunner().invoke(cli, [*base_args, *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert "Traceback" not in result.output, extra
        for needle in needles:
            assert needle in result.output, (extra, result.output)
        assert not (tmp_path / "runs").exists(), extra


def test_refuses_a_folder_that_is_not_a_lab_run(base_args, tmp_path):
    search_run = tmp_path / "runs" / "mine"
    search_run.mkdir(parents=True)
    (search_run / "config.yaml").write_text("trials: 3\n")
    result = CliRunner().invoke(cli, [*base_args, "--name", "mine"])
    assert result.exit_code == 2 and "is not a forgetting-lab run folder" in result.output
    assert [p.name for p in search_run.iterdir()] == ["config.yaml"]


def test_help_explains_each_scenario():
    result = CliRunner().invoke(cli, ["forgetting", "--help"])
    assert result.exit_code == 0
    for needle in (*(f"{name}:" for name in SCENARIOS.names()), "--probe-every", "--seeds", "--a-fraction",
                   "--shared", "strategies show NAME"):  # a strategy's own options: `wpl-nas strategies show NAME`
        assert needle in result.output, needle


def test_console_script_reports_errors_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "wpl_nas", "forgetting", "--scenario", "twomodel",
                           "--runs-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown scenario 'twomodel' (did you mean 'two-model'?)" in proc.stderr
    assert "Traceback" not in proc.stderr and not any(tmp_path.iterdir())
