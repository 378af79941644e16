"""Resuming a search: after Ctrl-C or SIGTERM, after a trial lost in flight, after a divergence with
a changed learning rate; and what a resume may change."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from click.testing import CliRunner
from optuna.trial import TrialState
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import wpl_nas
from wpl_nas.cli import cli
from wpl_nas.evaluation import retention_matrix
from wpl_nas.run_folder import RunFolder, read_anatomy
from wpl_nas.study import create_sampler
from wpl_nas.tracking.lock import LOCK_FILE
from wpl_nas.tracking.signals import SearchInterrupted, deferred, interrupts_handled

# --- helpers ---------------------------------------------------------------------------------


def _flags(space_file: Path, data_dir: Path, runs_dir: Path, name: str, *, trials: int, epochs: int = 1,
           batch_size: int = 128, **extra: Any) -> list[str]:
    flags = ["--space", str(space_file), "--data-dir", str(data_dir), "--runs-dir", str(runs_dir),
             "--study-name", name, "--trials", str(trials), "--epochs", str(epochs), "--batch-size", str(batch_size),
             "--eval-samples", "200", "--device", "cpu", "--threads", "1"]
    for key, value in extra.items():
        flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


def _config(space_file: Path, data_dir: Path, runs_dir: Path, name: str, trials: int,
            **kw: Any) -> wpl_nas.SearchConfig:
    return wpl_nas.SearchConfig(space=str(space_file), data_dir=str(data_dir), runs_dir=str(runs_dir),
                                study_name=name, trials=trials, epochs=1, batch_size=128, eval_samples=200,
                                device="cpu", threads=1, **kw)


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def _by_position(run_dir: Path) -> dict[str, Any]:
    """What a run computed, keyed by each candidate's position instead of its trial number: the
    completed candidates and scores in order, the retention matrix (the study's and retention.csv's
    rows), the anatomy record, the final re-scores, and the final supernet and strategy state."""
    run = wpl_nas.load_run(run_dir)
    trials = _finished(run.study)
    pos = {t.number: t.user_attrs["position"] for t in trials}
    assert sorted(pos.values()) == list(range(len(trials)))  # one candidate per position, in trial order

    def rekey(mapping: dict[str, Any]) -> dict[int, Any]:
        return {pos[int(k)]: v for k, v in mapping.items()}

    anatomy = read_anatomy(run_dir)
    with (run_dir / "retention.csv").open() as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["after_trial", "trial", "score", "score_at_training", "forgetting"]
    final = json.loads((run_dir / "final.json").read_text())
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    return {
        "candidates": [(t.user_attrs["arch"], t.values) for t in trials],
        "retention": {pos[k]: {pos[j]: v for j, v in row.items()} for k, row in retention_matrix(run.study).items()},
        "anatomy": {k: rekey(row) for k, row in rekey(anatomy).items()},
        "retention.csv": [(pos[int(after)], pos[int(trial)], *rest) for after, trial, *rest in rows[1:]],
        "final": sorted((pos[r["trial"]], r["arch"], r["final"]) for r in final["rows"]),
        "weights": {**{f"n.{k}": v for k, v in state["supernet"].items()},
                    **{f"s.{k}": v for k, v in state["strategy"].items()}},
    }


def _assert_same_run(a: dict[str, Any], b: dict[str, Any]) -> None:
    for key in ("candidates", "retention", "retention.csv", "anatomy", "final"):
        assert a[key] == b[key], key
    assert a["weights"].keys() == b["weights"].keys()
    for name, tensor in a["weights"].items():
        assert torch.equal(tensor, b["weights"][name]), name


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


# --- the signal handling itself --------------------------------------------------------------


def test_signals_inside_a_deferred_section_wait_for_its_end_and_handlers_are_restored():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    reached = []
    with pytest.raises(SearchInterrupted) as info, interrupts_handled():
        with deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler runs here, but only remembers the signal
            reached.append("end of section")
        reached.append("after the section")  # never: the signal is raised when the section ends
    assert reached == ["end of section"]
    assert info.value.exit_code == 143 and info.value.name == "SIGTERM"
    assert isinstance(info.value, KeyboardInterrupt)  # code that catches Ctrl-C catches it too
    assert {s: signal.getsignal(s) for s in before} == before
    with deferred():  # outside a search nothing is deferred or raised
        pass


def test_run_search_restores_the_signal_handlers(tiny_space_file, data_dir, tmp_path):
    def mine(signum: int, frame: object) -> None:
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    # SIGINT's handler as this process got it: Python's default_int_handler, or SIG_IGN when the
    # suite was started in the background by a shell without job control.
    interrupt = signal.getsignal(signal.SIGINT)
    try:
        wpl_nas.run_search(_config(tiny_space_file, data_dir, tmp_path, "h", 1), progress=False, command=["t"])
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is interrupt
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- a real search stopped by a signal -------------------------------------------------------


def _wait_for_the_second_trial(proc: subprocess.Popen[str], run_dir: Path, name: str) -> None:
    """Until the first trial has been told and the second one is running with its candidate chosen."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the search ended before it could be interrupted"
        if (run_dir / "checkpoints" / "last.pt").is_file():
            study = optuna.load_study(study_name=name, storage=f"sqlite:///{run_dir / 'study.db'}")
            trials = study.get_trials(deepcopy=False)
            if len(trials) == 2 and trials[0].state == TrialState.COMPLETE and "position" in trials[1].user_attrs:
                return
        time.sleep(0.05)
    raise AssertionError("the second trial did not start within 120 s")


@pytest.fixture(scope="module")
def uninterrupted(tiny_space_file, data_dir, tmp_path_factory) -> dict[str, Any]:
    """The signal test's search, run to its end without interruption."""
    runs = tmp_path_factory.mktemp("runs")
    flags = _flags(tiny_space_file, data_dir, runs, "whole", trials=2, epochs=2, batch_size=64)
    proc = subprocess.run([sys.executable, "-m", "wpl_nas", "search", "--no-progress", *flags],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return _by_position(runs / "whole")


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_stop_cleanly_and_the_same_command_resumes_exactly(
        tiny_space_file, data_dir, tmp_path, uninterrupted, signum, code):
    name = "stopped"
    run_dir = tmp_path / name
    # Two epochs of 64-sample batches: the second trial trains for a second or more, and the
    # signal is sent as soon as it has started.
    command = [sys.executable, "-m", "wpl_nas", "search", "--no-progress",
               *_flags(tiny_space_file, data_dir, tmp_path, name, trials=2, epochs=2, batch_size=64)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_the_second_trial(proc, run_dir, name)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    (message,) = [line for line in stderr.splitlines() if line.startswith("interrupted")]
    assert message.startswith(f"interrupted by {signal.Signals(signum).name}: trial 1 was in flight") \
        and "rerun the same command" in message

    study = wpl_nas.load_run(run_dir).study
    # The trial in flight is marked FAIL and its candidate queued to be trained again.
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert set(state["finished"]) == {t.number for t in _finished(study)}  # nothing lost, nothing extra
    assert not list(run_dir.rglob("*.tmp"))

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    study = wpl_nas.load_run(run_dir).study
    assert len(_finished(study)) == 2
    _assert_same_run(uninterrupted, _by_position(run_dir))


# --- a trial lost in flight ------------------------------------------------------------------


@pytest.fixture(scope="module")
def whole_runs(tiny_space_file, data_dir, tmp_path_factory) -> dict[str, dict[str, Any]]:
    """Uninterrupted 4-trial searches, one per sampler."""
    runs = tmp_path_factory.mktemp("runs")
    out = {}
    for sampler in ("random", "tpe"):
        result = wpl_nas.run_search(_config(tiny_space_file, data_dir, runs, f"whole-{sampler}", 4, sampler=sampler),
                                    progress=False, command=["t"])
        out[sampler] = _by_position(result.run_dir)
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("sampler", "suggested"), [("random", True), ("tpe", True), ("tpe", False)])
def test_a_resumed_run_equals_an_uninterrupted_one_even_after_a_trial_lost_in_flight(
        tiny_space_file, data_dir, tmp_path, whole_runs, sampler, suggested):
    config = _config(tiny_space_file, data_dir, tmp_path, "lost", 2, sampler=sampler)
    first = wpl_nas.run_search(config, progress=False, command=["t"])
    # What a process killed while training trial 2 leaves behind: the trial running, its candidate
    # suggested by the sampler the search seeds for that position (or killed before it was).
    study, space = first.study, wpl_nas.load_space(tiny_space_file)
    study.sampler = create_sampler(sampler, space, seed=config.seed * 100_003 + 2)
    lost = study.ask()
    if suggested:
        space.suggest(lost)
    resumed = wpl_nas.run_search(config.replace(trials=4), progress=False, command=["t"])

    trials = resumed.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL] + [TrialState.COMPLETE] * 2
    assert len(_finished(resumed.study)) == 4  # --trials counts finished trials, not failed ones
    assert trials[3].user_attrs.get("retry_of") == (2 if suggested else None)
    assert [t.user_attrs["position"] for t in trials if t.state == TrialState.COMPLETE] == [0, 1, 2, 3]
    _assert_same_run(whole_runs[sampler], _by_position(resumed.run_dir))


class _Stop(Exception):
    """What a kill in the middle of the after-trial work amounts to, raised at a chosen callback."""


@pytest.mark.slow
@pytest.mark.parametrize("where", ["RetentionCallback", "AnatomyCallback", "TensorBoardCallback"])
def test_after_trial_work_cut_short_is_redone_on_resume(tiny_space_file, data_dir, tmp_path, whole_runs,
                                                        monkeypatch, where):
    """A stop after trial 1 was checkpointed and told but before its pool re-score, anatomy snapshot or
    TensorBoard write: the resumed search redoes them first, so the retention matrix, the anatomy record
    and TensorBoard equal an uninterrupted run's (bench_kill.py found the matrix missing a column)."""
    import wpl_nas.callbacks as callbacks

    original = getattr(callbacks, where).__call__

    def stop_at_trial_1(self, study, trial):
        if trial.number == 1:
            raise _Stop(where)
        return original(self, study, trial)

    config = _config(tiny_space_file, data_dir, tmp_path, "cut", 4, sampler="random")
    with monkeypatch.context() as patch:
        patch.setattr(getattr(callbacks, where), "__call__", stop_at_trial_1)
        with pytest.raises(_Stop):
            wpl_nas.run_search(config, progress=False, command=["t"])
    study = wpl_nas.load_run(tmp_path / "cut").study
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2  # trial 1 was told, not lost
    with (tmp_path / "cut" / "retention.csv").open("a") as file:
        file.write("1,1,0.5")  # a kill in the middle of an append leaves half a row
    resumed = wpl_nas.run_search(config, progress=False, command=["t"])
    _assert_same_run(whole_runs["random"], _by_position(resumed.run_dir))
    events = EventAccumulator(str(resumed.run_dir / "tb" / "search"))
    events.Reload()
    assert {e.step for e in events.Scalars("retained/mean_acc")} == {0, 1, 2, 3}


@pytest.mark.slow
def test_a_checkpoint_whose_pool_is_a_trial_behind_is_caught_up_on_resume(tiny_space_file, data_dir, tmp_path,
                                                                          whole_runs, monkeypatch):
    """Runs made before the pool was re-scored inside the trial saved it after the study was told, so a
    stop in between left a checkpoint whose pool lacks the last trial: resuming such a run re-scores it
    first and ends equal to an uninterrupted run."""
    import wpl_nas.callbacks as callbacks

    original, publish = wpl_nas.SupernetObjective._update_pool, callbacks.RetentionCallback.__call__

    def old_order(self, number, arch, score, **kw):
        if number == 1:  # the old checkpoint of trial 1: its pool as after trial 0 (and no re-scores on it)
            raise_at_callback.append(True)
            return None
        return original(self, number, arch, score, **kw)

    def stop(self, study, trial):
        raise _Stop("killed before the old retention callback re-scored the pool")

    raise_at_callback: list[bool] = []
    config = _config(tiny_space_file, data_dir, tmp_path, "old", 4, sampler="random")
    with monkeypatch.context() as patch:
        patch.setattr(wpl_nas.SupernetObjective, "_update_pool", old_order)
        patch.setattr(callbacks.RetentionCallback, "__call__",
                      lambda self, study, trial: stop(self, study, trial) if raise_at_callback
                      else publish(self, study, trial))
        with pytest.raises(_Stop):
            wpl_nas.run_search(config, progress=False, command=["t"])
    state = RunFolder(tmp_path / "old").load_checkpoint()
    assert state is not None and sorted(state["finished"]) == [0, 1]
    assert not any(1 in rescores for *_, rescores in state["pool"]["entries"])  # a trial behind
    resumed = wpl_nas.run_search(config, progress=False, command=["t"])
    _assert_same_run(whole_runs["random"], _by_position(resumed.run_dir))


@pytest.mark.slow
def test_the_checkpoint_is_written_once_per_trial(tiny_space_file, data_dir, tmp_path, monkeypatch):
    writes: list[int] = []
    original = RunFolder.save_checkpoint

    def counted(self, state):
        writes.append(len(state["finished"]))
        return original(self, state)

    monkeypatch.setattr(RunFolder, "save_checkpoint", counted)
    wpl_nas.run_search(_config(tiny_space_file, data_dir, tmp_path, "once", 3), progress=False, command=["t"])
    assert writes == [1, 2, 3]


# --- what may change on resume ---------------------------------------------------------------


@pytest.mark.slow
def test_a_diverged_run_resumes_with_a_lower_lr_and_the_change_is_recorded(tiny_space_file, data_dir, tmp_path):
    def search(trials: int, **extra: Any):
        flags = _flags(tiny_space_file, data_dir, tmp_path, "div", trials=trials, strategy="naive", **extra)
        return CliRunner().invoke(cli, ["search", "--no-progress", *flags])

    assert search(1).exit_code == 0
    diverged = search(3, lr=1e12)
    assert diverged.exit_code == 1, diverged.output
    assert "diverged in epoch 0" in diverged.output and "lower --lr" in diverged.output
    assert "Traceback" not in diverged.output
    resumed = search(3, lr=0.01)
    assert resumed.exit_code == 0, resumed.output
    assert "lr 1000000000000.0 -> 0.01" in resumed.output

    run_dir = tmp_path / "div"
    study = wpl_nas.load_run(run_dir).study
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE,
                                                     TrialState.COMPLETE]
    assert study.trials[2].user_attrs["retry_of"] == 1 and study.trials[2].params == study.trials[1].params
    assert RunFolder(run_dir).config().lr == 0.01  # the top level: the options in force now
    history = RunFolder(run_dir).history()
    assert [(h["at_trial"], h["changed"]) for h in history] == [
        (1, {"trials": [1, 3], "lr": [0.05, 1e12]}),
        (1, {"lr": [1e12, 0.01]}),
    ]
    assert all(isinstance(h["command"], list) for h in history)
    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert "--lr" not in raw["command"]  # the command that started the run stays on top
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert {g["lr"] for g in state["optimizer"]["param_groups"]} == {0.01}
    assert wpl_nas.load_config(run_dir / "config.yaml").lr == 0.01  # a run's config.yaml is a config file

    # A short command keeps the run's options: no --lr does not put the default back.
    again = CliRunner().invoke(cli, ["search", "--no-progress", "--runs-dir", str(tmp_path), "--study-name", "div",
                                     "--space", str(tiny_space_file), "--strategy", "naive", "--data-dir",
                                     str(data_dir), "--eval-samples", "200", "--device", "cpu", "--threads", "1"])
    assert again.exit_code == 0, again.output
    assert len(RunFolder(run_dir).history()) == 2 and len(_finished(study)) == 3


def test_the_optimiser_takes_the_new_hyper_parameters_after_its_state_is_loaded(tiny_space_file, data_dir,
                                                                               tmp_path):
    config = _config(tiny_space_file, data_dir, tmp_path, "opt", 1, lr=0.05, momentum=0.9)
    wpl_nas.run_search(config, progress=False, command=["t"])
    saved = torch.load(tmp_path / "opt" / "checkpoints" / "last.pt", weights_only=True)["optimizer"]
    assert saved["state"] and saved["param_groups"][0]["lr"] == 0.05  # momentum buffers, the old lr
    objective = wpl_nas.SupernetObjective(config.replace(lr=0.01, momentum=0.5, weight_decay=0.0, wpl={"alpha": 3.0}))
    assert {(g["lr"], g["momentum"], g["weight_decay"]) for g in objective.optimizer.param_groups} == {(0.01, 0.5, 0.0)}
    assert objective.optimizer.state  # the momentum buffers came back with the checkpoint
    assert objective.strategy.strength(1) == 3.0
    assert objective.changes == {"lr": [0.05, 0.01], "momentum": [0.9, 0.5], "weight_decay": [1e-4, 0.0],
                                 "wpl.alpha": [100.0, 3.0]}


@pytest.mark.parametrize(("flag", "value", "needle"), [
    ("--seed", "1", "seed: saved 0, now 1"),
    ("--strategy", "ewc", "strategy: saved 'wpl', now 'ewc'"),
    ("--wpl-accumulate", "max", "wpl.accumulate: saved 'sum', now 'max'"),
    ("--pool-best", "2", "pool_best: saved 5, now 2"),
    ("--sampler", "random", "sampler: saved 'tpe', now 'random'"),
])
def test_a_forbidden_change_is_refused_and_the_run_left_byte_identical(tiny_space_file, data_dir, tmp_path,
                                                                       flag, value, needle):
    flags = _flags(tiny_space_file, data_dir, tmp_path, "fixed", trials=1)
    assert CliRunner().invoke(cli, ["search", "--no-progress", *flags]).exit_code == 0
    before = _digest(tmp_path / "fixed")
    refused = CliRunner().invoke(cli, ["search", "--no-progress", *flags, "--lr", "0.01", flag, value])
    assert refused.exit_code == 2, refused.output
    assert "different configuration" in refused.output and needle in refused.output
    assert "lr:" not in refused.output.split("different configuration")[1].split(")")[0]  # lr may change
    assert "Traceback" not in refused.output and "resuming with changed options" not in refused.output
    assert _digest(tmp_path / "fixed") == before
