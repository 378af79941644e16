"""Searches that measure less often: ``--rescore-every K`` (the pool re-scored after every K-th
finished trial and the last) and ``--no-epoch-scores`` (a candidate scored after its last epoch
only). Both are measurements: the candidates, their values, final.csv and the final weights equal
the default's."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from click.testing import CliRunner
from optuna.trial import TrialState
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import wpl_nas
from wpl_nas.cli import cli
from wpl_nas.evaluation import retention_matrix

TRIALS = 5


def _config(space_file: Path, data_dir: Path, runs_dir: Path, name: str, **kw: Any) -> wpl_nas.SearchConfig:
    return wpl_nas.SearchConfig(space=str(space_file), data_dir=str(data_dir), runs_dir=str(runs_dir),
                                study_name=name, trials=TRIALS, epochs=2, batch_size=128, train_samples=1024,
                                eval_samples=200, device="cpu", threads=1, sampler="random", **kw)


def _run(run_dir: Path) -> dict[str, Any]:
    """What a run produced: its trials (values, intermediate values, re-scores), retention.csv's rows,
    retention.json, final.csv and the final weights."""
    study = wpl_nas.load_run(run_dir).study
    trials = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    with (run_dir / "retention.csv").open() as file:
        rows = [(int(r[0]), int(r[1]), float(r[2])) for r in list(csv.reader(file))[1:]]
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    return {"values": [(t.user_attrs["arch"], t.value) for t in trials],
            "intermediate": [t.intermediate_values for t in trials],
            "rescores": [{int(k): v for k, v in t.user_attrs["rescores"].items()} for t in trials],
            "matrix": retention_matrix(study), "csv": rows, "study_attrs": study.user_attrs,
            "json": json.loads((run_dir / "retention.json").read_text()),
            "final.csv": (run_dir / "final.csv").read_text(), "weights": state["supernet"]}


def _same_search(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["values"] == b["values"]
    assert a["final.csv"] == b["final.csv"]
    assert a["weights"].keys() == b["weights"].keys()
    for name, tensor in a["weights"].items():
        assert torch.equal(tensor, b["weights"][name]), name


@pytest.fixture(scope="module")
def runs(tiny_space_file, data_dir, tmp_path_factory) -> dict[str, dict[str, Any]]:
    """5-trial searches of 2 epochs: the default, re-scored every 2 (with the heatmap every 3 trials)
    and every 3 trials, and scored after the last epoch only."""
    folder = tmp_path_factory.mktemp("runs")
    variants: dict[str, dict[str, Any]] = {"k1": {}, "k2": {"rescore_every": 2, "figures_every": 3},
                                           "k3": {"rescore_every": 3}, "last-epoch": {"epoch_scores": False}}
    out = {}
    for name, extra in variants.items():
        result = wpl_nas.run_search(_config(tiny_space_file, data_dir, folder, name, **extra), progress=False,
                                    command=["t"])
        out[name] = _run(result.run_dir) | {"run_dir": result.run_dir}
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("name", "rescored"), [("k2", [1, 3, 4]), ("k3", [2, 4])])
def test_the_pool_is_rescored_after_every_kth_trial_and_the_last_only(runs, name, rescored):
    """K=2 and K=3 over 5 trials: the members are re-scored after trials 1, 3, 4 and 2, 4 (the last always),
    to the very scores the default search took then (the weights are the same); in between a trial's
    re-scores hold its own score at training alone, in its attribute and in retention.csv."""
    base, run = runs["k1"], runs[name]
    _same_search(base, run)
    assert run["intermediate"] == base["intermediate"]
    for number, (rescores, every) in enumerate(zip(run["rescores"], base["rescores"], strict=True)):
        if number in rescored:
            assert rescores == every  # the same members, the same scores
        else:
            assert rescores == {number: run["values"][number][1]}
    assert run["csv"] == [r for r in base["csv"] if r[0] in rescored or r[0] == r[1]]
    matrix = run["matrix"]
    assert matrix == {t: {j: s for j, s in row.items() if j in rescored or j == t} for t, row in base["matrix"].items()}
    # The last re-score's measures: the earlier members are those of the previous re-score, and the step
    # forgetting is their drop since it (over the K trials between), from the default run's matrix.
    last, previous = rescored[-1], rescored[-2]
    attrs, record = run["study_attrs"], run["json"]
    assert attrs["pool_after_trial"] == last and attrs["pool_previous_after_trial"] == previous
    earlier = record["earlier"]
    assert earlier and all(previous in matrix[t] for t in earlier)
    assert set(record["joined"]) == set(record["members"]) - set(earlier)
    step = sum(matrix[t][previous] - matrix[t][last] for t in earlier) / len(earlier)
    assert math.isclose(record["summary"]["forgetting_this_trial"], step, abs_tol=1e-12)
    # TensorBoard: the pool's measures at the re-scores only.
    events = EventAccumulator(str(run["run_dir"] / "tb" / "search"), size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("retained/mean_acc")] == rescored
    assert [e.step for e in events.Scalars("forgetting/this_trial")] == rescored[1:]  # no earlier member at first


@pytest.mark.slow
def test_the_heatmap_is_drawn_at_the_first_rescore_at_or_after_each_multiple(runs):
    """Re-scored every 2 trials (after 1, 3, 4), the heatmap every 3 (trials 0 and 3): drawn after 1 and 3."""
    events = EventAccumulator(str(runs["k2"]["run_dir"] / "tb" / "search"), size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Images("forgetting/matrix")] == [1, 3]


@pytest.mark.slow
def test_scoring_after_the_last_epoch_only_changes_nothing_but_the_intermediate_values(runs):
    """--no-epoch-scores: the same candidates, values, re-scores, final.csv and weights; one intermediate
    value per trial, at its last epoch, equal to its value."""
    base, run = runs["k1"], runs["last-epoch"]
    _same_search(base, run)
    assert run["rescores"] == base["rescores"] and run["csv"] == base["csv"]
    assert all(len(i) == 2 for i in base["intermediate"])
    assert run["intermediate"] == [{1: value} for _, value in run["values"]]


class _Stop(Exception):
    """A kill between the checkpoint of a trial and its after-trial work."""


@pytest.mark.slow
def test_a_search_stopped_between_two_rescores_resumes_equal_to_an_uninterrupted_one(
        tiny_space_file, data_dir, tmp_path, runs, monkeypatch):
    """K=3: stopped after trial 3 (between the re-scores after 2 and 4) was checkpointed and told, before
    its after-trial work; resumed, the search re-scores after trial 4 as the uninterrupted one did, and
    everything recorded is the same."""
    import wpl_nas.callbacks as callbacks

    original = callbacks.RetentionCallback.__call__

    def stop_at_trial_3(self, study, trial):
        if trial.number == 3:
            raise _Stop
        return original(self, study, trial)

    config = _config(tiny_space_file, data_dir, tmp_path, "k3", rescore_every=3)
    with monkeypatch.context() as patch:
        patch.setattr(callbacks.RetentionCallback, "__call__", stop_at_trial_3)
        with pytest.raises(_Stop):
            wpl_nas.run_search(config, progress=False, command=["t"])
    study = wpl_nas.load_run(tmp_path / "k3").study
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    resumed = _run(wpl_nas.run_search(config, progress=False, command=["t"]).run_dir)
    whole = runs["k3"]
    _same_search(whole, resumed)
    for key in ("rescores", "matrix", "csv", "json"):
        assert resumed[key] == whole[key], key


@pytest.mark.slow
def test_the_options_may_change_on_resume(tiny_space_file, data_dir, tmp_path):
    config = _config(tiny_space_file, data_dir, tmp_path, "change").replace(trials=1, epochs=1)
    wpl_nas.run_search(config, progress=False, command=["t"])
    result = wpl_nas.run_search(config.replace(trials=2, rescore_every=2, epoch_scores=False), progress=False,
                                command=["t"])
    history = wpl_nas.load_config(result.run_dir / "config.yaml")
    assert history.rescore_every == 2 and history.epoch_scores is False
    assert len(optuna.load_study(study_name="change", storage=f"sqlite:///{result.run_dir / 'study.db'}").trials) == 2


@pytest.mark.parametrize(("flags", "named"), [
    (["--rescore-every", "0"], "rescore_every=0"),
    (["--rescore-every", "-3"], "rescore_every=-3"),
    (["--rescore-every", "2.5"], "2.5"),
    (["--no-epoch-scores", "--pruner", "median"], "pruner='median'"),
])
def test_bad_values_exit_2_naming_the_value(tmp_path, flags, named):
    result = CliRunner().invoke(cli, ["search", "--runs-dir", str(tmp_path / "runs"), *flags])
    assert result.exit_code == 2, result.output
    assert named in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("text", "named"), [("rescore_every: 0\n", "rescore_every=0"),
                                             ("rescore_every: 1.5\n", "rescore_every"),
                                             ("epoch_scores: false\npruner: halving\n", "pruner='halving'")])
def test_bad_values_in_the_config_file_exit_2_naming_them(tmp_path, text, named):
    path = tmp_path / "search.yaml"
    path.write_text(text)
    result = CliRunner().invoke(cli, ["search", "--config", str(path), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert named in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_two_torchrun_processes_rescore_at_the_same_trials_as_one(tiny_space_file, mnist1d, data_dir, tmp_path):
    """2 gloo processes, the pool re-scored every 2 trials and no per-epoch scores: rank 0 decides
    which trials re-score (the others are sent an empty pool in between), so the re-scores fall after
    the same trials as in one process (1 and the last, 2), to the same scores within float noise."""
    import subprocess
    import sys

    flags = ["search", "--trials", "3", "--epochs", "2", "--train-samples", "300", "--batch-size", "50",
             "--eval-samples", "256", "--device", "cpu", "--threads", "1", "--no-progress", "--space",
             str(tiny_space_file), "--data-dir", str(data_dir), "--study-name", "s", "--rescore-every", "2",
             "--no-epoch-scores"]
    one = CliRunner().invoke(cli, [*flags, "--runs-dir", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "wpl_nas", *flags, "--runs-dir", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=300, check=False)
    assert two.returncode == 0, two.stderr[-3000:]
    trials = {}
    for name in ("one", "two"):
        study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / name / 's' / 'study.db'}")
        trials[name] = [(t.user_attrs["arch"], t.intermediate_values.keys(), t.user_attrs["rescores"])
                        for t in study.get_trials()]
    assert [(a, list(i)) for a, i, _ in trials["one"]] == [(a, list(i)) for a, i, _ in trials["two"]]
    assert all(list(i) == [1] for _, i, _ in trials["one"])  # the last epoch's score only
    for (_, _, a), (_, _, b) in zip(trials["one"], trials["two"], strict=True):
        assert a.keys() == b.keys()
        assert all(abs(a[t] - b[t]) <= 2 / 256 + 1e-9 for t in a)
    assert list(trials["one"][0][2]) == ["0"] and len(trials["one"][1][2]) == 2 and len(trials["one"][2][2]) == 3
