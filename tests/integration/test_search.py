"""End to end: `wpl-nas search` on a tiny budget, read back from SQLite and TensorBoard."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import wpl_nas
from wpl_nas.cli import cli
from wpl_nas.evaluation import retention_matrix


@pytest.fixture
def base_args(tiny_space_file, data_dir, tmp_path) -> list[str]:
    return ["search", "--no-progress", "--space", str(tiny_space_file), "--data-dir", str(data_dir),
            "--runs-dir", str(tmp_path / "runs"), "--epochs", "1", "--batch-size", "128", "--device", "cpu",
            "--study-name", "tiny"]


def invoke(args: list[str]):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_cli_search_writes_study_tensorboard_and_checkpoint(base_args, tmp_path, tiny_space):
    result = invoke([*base_args, "--trials", "3"])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "tiny"
    assert "best architecture" in result.output
    assert f"tensorboard --logdir {run_dir / 'tb'}" in result.output
    assert f"wpl-nas dashboard {run_dir}  (storage sqlite:///{run_dir / 'study.db'})" in result.output
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.pt").is_file()
    assert "command:" in (run_dir / "config.yaml").read_text()

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{run_dir / 'study.db'}")
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    for t in trials:
        arch = tiny_space.parse(t.user_attrs["arch"])
        assert t.params == dict(arch)  # one categorical per edge, op names as values
        assert t.user_attrs["params"] > 0
        assert 0.0 <= t.user_attrs["score_at_training"] <= 1.0
        assert t.value == t.user_attrs["score_at_training"]
        assert "penalty" in t.user_attrs and t.intermediate_values.keys() == {0}
    assert trials[0].user_attrs["penalty"] == 0.0  # nothing consolidated before the first candidate
    # Each trial carries the pool's re-score after it; the study the latest one (the retention matrix,
    # row per candidate, is rebuilt from the trials).
    assert set(study.user_attrs["latest_rescore"]) == {"0", "1", "2"}
    assert [set(t.user_attrs["rescores"]) for t in trials] == [{"0"}, {"0", "1"}, {"0", "1", "2"}]
    assert "retention" not in study.user_attrs  # no whole-matrix attribute rewritten every trial
    retention = retention_matrix(study)
    assert retention[0].keys() == {0, 1, 2} and retention[2].keys() == {2}
    assert retention[0][0] == trials[0].value
    assert study.user_attrs["latest_rescore"]["0"] == retention[0][2]
    assert study.user_attrs["pool"] == [0, 1, 2] and study.user_attrs["pool_after_trial"] == 2
    assert study.user_attrs["forgetting_max"] >= study.user_attrs["forgetting_mean"]

    events = EventAccumulator(str(run_dir / "tb" / "search"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "val/acc", "train/wpl_penalty", "retained/mean_acc", "forgetting/mean",
            "forgetting/max"} <= tags
    assert [e.step for e in events.Scalars("val/acc")] == [0, 1, 2]
    assert [e.value for e in events.Scalars("val/acc")] == pytest.approx([t.value for t in trials])
    member = EventAccumulator(str(run_dir / "tb" / "trials" / "trial_0000"))
    member.Reload()
    assert [e.step for e in member.Scalars("retained/candidate_acc")] == [0, 1, 2]


def search(tmp_path: Path, name: str, trials: int, tiny_space_file, data_dir, **kw) -> wpl_nas.SearchResult:
    options = {"epochs": 1, "batch_size": 128, "device": "cpu", **kw}
    config = wpl_nas.SearchConfig(space=str(tiny_space_file), data_dir=str(data_dir), runs_dir=str(tmp_path),
                                  study_name=name, trials=trials, **options)
    return wpl_nas.run_search(config, progress=False, command=["test"])


def snapshot(result: wpl_nas.SearchResult) -> tuple[list[tuple[str, float]], dict[str, torch.Tensor]]:
    trials = [(t.user_attrs["arch"], t.value) for t in result.study.get_trials()]
    state = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=True)
    return trials, {**{f"s.{k}": v for k, v in state["strategy"].items()},
                    **{f"n.{k}": v for k, v in state["supernet"].items()}}


def assert_same(a, b):
    assert a[0] == b[0]
    assert a[1].keys() == b[1].keys()
    for k in a[1]:
        assert torch.equal(a[1][k], b[1][k]), k


def test_seeded_search_is_deterministic_and_resume_matches_an_uninterrupted_run(tmp_path, tiny_space_file,
                                                                                data_dir):
    whole = snapshot(search(tmp_path, "whole", 4, tiny_space_file, data_dir))
    assert_same(whole, snapshot(search(tmp_path, "again", 4, tiny_space_file, data_dir)))
    search(tmp_path, "resumed", 2, tiny_space_file, data_dir)
    resumed = search(tmp_path, "resumed", 4, tiny_space_file, data_dir)
    assert len(resumed.study.get_trials()) == 4
    assert_same(whole, snapshot(resumed))
    assert resumed.study.user_attrs["latest_rescore"].keys() == {"0", "1", "2", "3"}


def test_resume_after_a_trial_was_lost_in_flight(tmp_path, tiny_space_file, data_dir):
    first = search(tmp_path, "crash", 2, tiny_space_file, data_dir)
    first.study.ask()  # a trial that started but never finished, as after a kill
    result = search(tmp_path, "crash", 3, tiny_space_file, data_dir)
    states = [t.state for t in result.study.get_trials()]
    assert states == [optuna.trial.TrialState.COMPLETE] * 2 + [optuna.trial.TrialState.FAIL,
                                                               optuna.trial.TrialState.COMPLETE]


def digest(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_bad_input_exits_2_names_the_value_and_leaves_the_run_intact(base_args, tmp_path):
    assert invoke([*base_args, "--trials", "1"]).exit_code == 0
    run_dir = tmp_path / "runs" / "tiny"
    before = digest(run_dir)
    malformed = tmp_path / "malformed.yaml"
    malformed.write_text("trials: [1, 2\n")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("trails: 2\n")
    cases = [
        (["--space", "nope"], ["'nope'", "mnist1d", "nb201"]),
        (["--strategy", "ewk"], ["'ewk'", "did you mean 'ewc'", "valid choices:", "online-ewc", "wpl"]),
        (["--strategy", "wpl+ewc"], ["'wpl+ewc'", "both quadratic"]),
        (["--si-xi", "-1"], ["si.xi must be > 0", "xi=-1.0"]),
        (["--sampler", "cmaes"], ["'cmaes'", "tpe", "random", "grid"]),
        (["--dataset", "imagenet"], ["'imagenet'", "mnist1d", "cifar10"]),
        (["--config", str(malformed)], ["malformed YAML", str(malformed)]),
        (["--config", str(unknown)], ["'trails'", "did you mean 'trials'"]),
        (["--storage", "not a url"], ["invalid storage URL 'not a url'"]),
        (["--storage", "nosuchdb://host/db"], ["invalid storage URL 'nosuchdb://host/db'"]),
        (["--wpl-form", "implicit"], ["'implicit'", "proximal, gradient"]),
        (["--seed", "1"], ["different configuration", "seed: saved 0, now 1"]),
        (["--eval-samples", "100"], ["different configuration", "eval_samples: saved 0, now 100"]),
        (["--wpl-fisher-batches", "2"], ["different configuration", "wpl.fisher_batches: saved 8, now 2"]),
        (["--trials", "zero"], ["'zero' is not a valid integer"]),
    ]
    for extra, needles in cases:
        result = CliRunner().invoke(cli, [*base_args, "--trials", "2", *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert "Traceback" not in result.output
        for needle in needles:
            assert needle in result.output, (extra, result.output)
        assert digest(run_dir) == before, extra


def test_console_script_reports_errors_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "wpl_nas", "search", "--strategy", "nieve",
                           "--runs-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown strategy 'nieve' (did you mean 'naive'?)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())


def test_a_diverging_search_stops_with_a_clear_message_and_exit_code_1(base_args):
    result = CliRunner().invoke(cli, [*base_args, "--trials", "2", "--lr", "1e12"])
    assert result.exit_code == 1 and result.exception is not None and isinstance(result.exception, SystemExit)
    assert "diverged in epoch 0" in result.output and "lower --lr" in result.output
    assert "Traceback" not in result.output


def test_spaces_commands(tmp_path):
    result = invoke(["spaces"])
    assert result.exit_code == 0
    assert "mnist1d" in result.output and "15,625" in result.output
    shown = invoke(["spaces", "show", "nb201"])
    assert shown.exit_code == 0 and "nor_conv_3x3" in shown.output and "0->1" in shown.output
    bad = CliRunner().invoke(cli, ["spaces", "show", "nope"])
    assert bad.exit_code == 2 and "unknown search space 'nope'; valid choices: " in bad.output
    assert all(name in bad.output for name in wpl_nas.builtin_spaces())
    drawn = invoke(["spaces", "show", "nb201", "--render", str(tmp_path / "cell.png")])
    assert drawn.exit_code == 0 and (tmp_path / "cell.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def test_pruned_candidates_are_neither_consolidated_nor_pooled(tmp_path, tiny_space_file, data_dir, monkeypatch):
    from wpl_nas.study import PRUNERS

    monkeypatch.setitem(PRUNERS._items, "always", AlwaysPrune)
    result = search(tmp_path, "pruned", 2, tiny_space_file, data_dir, pruner="always", epochs=2)
    trials = result.study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.PRUNED] * 2
    assert all(t.intermediate_values.keys() == {0} for t in trials)  # stopped after the first epoch
    state = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert int(state["strategy"]["consolidated"]) == 0 and state["pool"]["entries"] == []
    assert result.best_arch is None and "no trial completed" in result.summary()
