"""`wpl-nas retrain --restart`: a retraining started over with other epochs, without deleting it by hand;
without --restart a changed setting is refused, naming --restart."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import wpl_nas
from wpl_nas.cli import cli
from wpl_nas.retrain import retrain_run


@pytest.fixture(scope="module")
def run_dir(tiny_space_file, data_dir, tmp_path_factory):
    config = wpl_nas.SearchConfig(space=str(tiny_space_file), data_dir=str(data_dir),
                                  runs_dir=str(tmp_path_factory.mktemp("runs")), study_name="restart", trials=2,
                                  epochs=1, batch_size=256, device="cpu", eval_samples=200)
    return wpl_nas.run_search(config, progress=False, command=["test"]).run_dir


def _retrain(run_dir, *args: str):
    return CliRunner().invoke(cli, ["retrain", str(run_dir), "--trial", "0", "--no-progress", *args])


@pytest.mark.slow
def test_other_epochs_are_refused_naming_restart_and_restart_starts_over(run_dir):
    first = _retrain(run_dir, "--epochs", "2")
    assert first.exit_code == 0, first.output
    folder = run_dir / "retrain" / "trial_0000"
    assert json.loads((folder / "result.json").read_text())["epochs"] == 2
    before = sorted(p.name for p in (folder / "tb").iterdir())

    refused = _retrain(run_dir, "--epochs", "1")
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    (error,) = [line for line in refused.output.splitlines() if line.startswith("Error:")]
    assert "is a retraining of 2 epochs, not 1" in error and "--restart" in error and "--epochs 2" in error
    assert json.loads((folder / "result.json").read_text())["epochs"] == 2  # untouched

    restarted = _retrain(run_dir, "--epochs", "1", "--restart")
    assert restarted.exit_code == 0, restarted.output
    assert "after 1 epochs" in restarted.output
    result = json.loads((folder / "result.json").read_text())
    assert result["epochs"] == 1 and len(result["val_accuracy"]) == 1
    assert len(list((folder / "tb").iterdir())) == len(before)  # the old events went with the old run

    # Started over from scratch: the same as a first retraining of 1 epoch.
    fresh = retrain_run(run_dir, trial=0, epochs=1, progress=False, restart=True)
    assert fresh.val_scores == result["val_accuracy"] and fresh.test_score == result["test_accuracy"]
    assert _retrain(run_dir, "--epochs", "1").exit_code == 0  # and a rerun without --restart resumes it


@pytest.mark.slow
def test_restart_checks_the_options_before_deleting_anything(run_dir):
    assert _retrain(run_dir, "--epochs", "1").exit_code == 0
    kept = {p: p.read_bytes() for p in (run_dir / "retrain").rglob("*") if p.is_file()}
    bad = CliRunner().invoke(cli, ["retrain", str(run_dir), "--trial", "99", "--restart", "--no-progress"])
    assert bad.exit_code == 2 and "trial 99" in bad.output
    assert {p: p.read_bytes() for p in (run_dir / "retrain").rglob("*") if p.is_file()} == kept
