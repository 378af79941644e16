"""wpl-nas as an Optuna plugin: SupernetObjective and its callbacks inside the user's own study."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import wpl_nas
from wpl_nas import ConfigError, SupernetObjective
from wpl_nas.errors import TrainingDiverged
from wpl_nas.evaluation import retention_matrix
from wpl_nas.tracking.markdown import code_cell


@pytest.fixture
def make_objective(tiny_space_file, data_dir, tmp_path):
    def make(name: str = "run", **kw) -> SupernetObjective:
        options = {"space": str(tiny_space_file), "data_dir": str(data_dir), "epochs": 1, "batch_size": 256,
                   "device": "cpu", "eval_samples": 200, **kw}
        return SupernetObjective(run_dir=tmp_path / name, **options)
    return make


def storage_url(kind: str, tmp_path: Path) -> optuna.storages.BaseStorage | str | None:
    if kind == "inmemory":
        return None
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    journal = optuna.storages.journal.JournalFileBackend(str(tmp_path / "journal.log"))
    return optuna.storages.JournalStorage(journal)


SAMPLERS = {
    "tpe": lambda: optuna.samplers.TPESampler(seed=0),
    "random": lambda: optuna.samplers.RandomSampler(seed=0),
    "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=0, population_size=2),
}


@pytest.mark.slow
@pytest.mark.parametrize(("sampler", "storage"), [("tpe", "sqlite"), ("random", "inmemory"), ("nsga2", "journal"),
                                                  ("tpe", "journal"), ("random", "sqlite")])
def test_objective_runs_with_samplers_and_storages(make_objective, tmp_path, sampler, storage):
    objective = make_objective()
    study = optuna.create_study(direction="maximize", sampler=SAMPLERS[sampler](),
                                storage=storage_url(storage, tmp_path))
    study.optimize(objective, n_trials=3, callbacks=[objective.retention_callback()])
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:
        assert 0.0 <= t.value <= 1.0 and t.value == t.user_attrs["score_at_training"]
        assert t.params == dict(objective.space.parse(t.user_attrs["arch"]))
        assert t.intermediate_values == {0: t.value}
    assert set(objective.finished) == {0, 1, 2}
    assert study.user_attrs["pool"] == [0, 1, 2] and study.user_attrs["pool_after_trial"] == 2
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    assert (tmp_path / "run" / "config.yaml").is_file()


def enqueue(study: optuna.Study, archs: list[wpl_nas.Architecture]) -> None:
    for arch in archs:
        study.enqueue_trial(dict(arch))


def state_of(objective: SupernetObjective) -> dict[str, torch.Tensor]:
    return {**{f"n.{k}": v for k, v in objective.supernet.state_dict().items()},
            **{f"s.{k}": v for k, v in objective.strategy.state_dict().items() if isinstance(v, torch.Tensor)}}


@pytest.mark.slow
def test_second_optimize_on_a_reopened_study_continues_where_the_first_stopped(make_objective, tmp_path,
                                                                                tiny_space):
    import random
    archs = [tiny_space.sample(random.Random(i)) for i in range(4)]

    whole = make_objective("whole")
    study = optuna.create_study(direction="maximize", storage=f"sqlite:///{tmp_path / 'whole.db'}")
    enqueue(study, archs)
    study.optimize(whole, n_trials=4, callbacks=[whole.retention_callback()])

    url = f"sqlite:///{tmp_path / 'parts.db'}"
    first = make_objective("parts")
    study1 = optuna.create_study(direction="maximize", storage=url, study_name="parts")
    enqueue(study1, archs)
    study1.optimize(first, n_trials=2, callbacks=[first.retention_callback()])
    del first, study1  # a new process: everything comes back from the run folder and the storage
    second = make_objective("parts")
    study2 = optuna.create_study(direction="maximize", storage=url, study_name="parts", load_if_exists=True)
    study2.optimize(second, n_trials=2, callbacks=[second.retention_callback()])

    assert [t.value for t in study2.get_trials()] == [t.value for t in study.get_trials()]
    assert retention_matrix(study2) == retention_matrix(study)
    a, b = state_of(whole), state_of(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_ask_and_tell_and_a_trial_lost_in_flight(make_objective, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    objective = make_objective()
    study = optuna.create_study(direction="maximize", storage=url, study_name="s",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    frozen = study.tell(trial, objective(trial))
    objective.retention_callback()(study, frozen)
    assert frozen.state == TrialState.COMPLETE and study.user_attrs["pool"] == [0]

    study.ask()  # started, then the process dies
    reopened = make_objective()
    study = optuna.load_study(study_name="s", storage=url)
    study.optimize(reopened, n_trials=1)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]


def test_a_diverged_trial_leaves_the_checkpoint_intact_and_resumes_from_it(make_objective, tmp_path):
    # Naive and a seeded sampler: under WPL a path it already consolidated can absorb even this
    # learning rate through the proximal pull, so whether the loss blows up would depend on the draw.
    url = f"sqlite:///{tmp_path / 'study.db'}"
    objective = make_objective(strategy="naive")
    study = optuna.create_study(direction="maximize", storage=url, study_name="s",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=1)
    saved = objective.checkpoint_path.read_bytes()
    for group in objective.optimizer.param_groups:  # a learning rate no network survives
        group["lr"] = 1e12
    with pytest.raises(TrainingDiverged, match=r"\(trial 1\) diverged in epoch 0: its mean training loss is"):
        study.optimize(objective, n_trials=1)
    assert objective.checkpoint_path.read_bytes() == saved  # nothing of the diverged trial was written
    with pytest.raises(RuntimeError, match=r"trial 1 diverged; .* create a new one"):
        objective(study.ask())
    resumed = make_objective(strategy="naive")  # from the checkpoint: the supernet after trial 0
    study.optimize(resumed, n_trials=1)
    states = [t.state for t in study.get_trials()]
    assert states[:2] == [TrialState.COMPLETE, TrialState.FAIL] and states[-1] == TrialState.COMPLETE
    assert all(torch.isfinite(p).all() for p in resumed.supernet.parameters())


@pytest.mark.slow
def test_checkpointed_but_untold_trial_is_told_on_resume(make_objective, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    objective = make_objective()
    study = optuna.create_study(direction="maximize", storage=url, study_name="s")
    trial = study.ask()
    value = objective(trial)  # trained and checkpointed; the process dies before study.tell
    study = optuna.load_study(study_name="s", storage=url)
    make_objective().reconcile(study)
    (told,) = study.get_trials()
    assert told.state == TrialState.COMPLETE and told.value == value


@pytest.mark.slow
def test_pruned_trial_is_checkpointed_and_reported_as_pruned(make_objective, tmp_path):
    objective = make_objective(epochs=2)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1.1))
    study.optimize(objective, n_trials=1, callbacks=[objective.retention_callback()])
    (trial,) = study.get_trials()
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [0]
    assert objective.finished == {0: ("PRUNED", None)}
    assert study.user_attrs["pool"] == []  # a pruned candidate is not pooled


@pytest.mark.slow
def test_parallel_trials_are_refused(make_objective):
    objective = make_objective()
    study = optuna.create_study(direction="maximize")
    with pytest.raises(RuntimeError, match="n_jobs=1"):
        study.optimize(objective, n_trials=4, n_jobs=2)


def test_changed_configuration_on_an_existing_run_folder_is_refused(make_objective):
    objective = make_objective()
    objective.reconcile(optuna.create_study(direction="maximize"))  # writes config.yaml
    with pytest.raises(ConfigError, match="strategy: saved 'wpl', now 'naive'"):
        make_objective(strategy="naive")
    make_objective(device="cpu", threads=1)  # resumable changes are fine


@pytest.mark.slow
def test_checkpoint_of_another_study_is_refused(make_objective):
    objective = make_objective()
    optuna.create_study(direction="maximize").optimize(objective, n_trials=1)
    with pytest.raises(ConfigError, match="another run"):
        make_objective().reconcile(optuna.create_study(direction="maximize"))


@pytest.mark.slow
def test_callbacks_attached_and_detached(make_objective, tmp_path):
    bare = make_objective("bare")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(bare, n_trials=2)
    assert "retention" not in study.user_attrs and not (tmp_path / "bare" / "tb").exists()

    objective = make_objective("logged")
    tensorboard = objective.tensorboard_callback()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    study.optimize(objective, n_trials=3, callbacks=[objective.retention_callback(), tensorboard])
    tensorboard.close()
    events = EventAccumulator(str(tmp_path / "logged" / "tb" / "search"))  # the search's own run
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"val/acc", "train/loss", "train/wpl_penalty", "retained/mean_acc", "forgetting/max",
            "retained/earlier_mean_acc", "forgetting/this_trial"} <= tags
    assert [e.value for e in events.Scalars("val/acc")] == pytest.approx([t.value for t in study.get_trials()])
    member = EventAccumulator(str(tmp_path / "logged" / "tb" / "trials" / "trial_0000"))  # trial 0's own run
    member.Reload()
    assert [e.step for e in member.Scalars("retained/candidate_acc")] == [0, 1, 2]
    latest = study.user_attrs["latest_rescore"]["0"]
    assert member.Scalars("retained/candidate_acc")[-1].value == pytest.approx(latest)
    assert {"forgetting/backward_transfer", "stability/kendall_tau", "forgetting/hat_ratio"} <= tags
    taus = events.Scalars("stability/kendall_tau")  # τ needs two members, and is NaN (not logged) on ties
    assert {e.step for e in taus} <= {1, 2} and all(-1.0 <= e.value <= 1.0 for e in taus)
    images = events.Images("forgetting/matrix")
    assert [e.step for e in images] == [0, 1, 2] and all(e.width > 100 for e in images)
    assert [e.step for e in events.Images("trial/cell")] == [0, 1, 2]
    assert "trial/arch/text_summary" in events.Tags()["tensors"]
    trials = sorted(p.name for p in (tmp_path / "logged" / "tb" / "trials").iterdir() if p.is_dir())
    assert trials == ["trial_0000", "trial_0001", "trial_0002"]  # one HPARAMS row (run) per trial

    # The dashboard's view: each trial's cell as an artifact; the pool's re-scores as the study's note.
    from optuna_dashboard import get_note

    for t in study.get_trials():
        (meta,) = optuna.artifacts.get_all_artifact_meta(t, storage=study._storage)
        assert meta.mimetype == "image/png" and (tmp_path / "logged" / "artifacts" / meta.artifact_id).is_file()
    note = get_note(study)
    assert "Retained pool after trial 2" in note and code_cell(study.trials[0].user_attrs["arch"]) in note
    assert f"{latest:.4f}" in note

    # The retention matrix in the run folder, as JSON and CSV, matches the study's attributes.
    saved = json.loads((tmp_path / "logged" / "retention.json").read_text())
    assert saved["after_trial"] == 2 and saved["members"] == [0, 1, 2]
    matrix = retention_matrix(study)
    assert [(c["trial"], c["latest"]) for c in saved["candidates"]] == [(t, row[max(row)]) for t, row in matrix.items()]
    assert saved["summary"]["backward_transfer"] == pytest.approx(-saved["summary"]["forgetting_mean"])
    rows = list(csv.DictReader((tmp_path / "logged" / "retention.csv").open()))  # one row per re-score
    assert [(r["after_trial"], r["trial"]) for r in rows] == [("0", "0"), ("1", "0"), ("1", "1"),
                                                              ("2", "0"), ("2", "1"), ("2", "2")]
    assert {(int(r["trial"]), int(r["after_trial"])): float(r["score"]) for r in rows} == {
        (t, j): v for t, row in matrix.items() for j, v in row.items()}
    assert float(rows[3]["score"]) == pytest.approx(latest)


def test_a_run_made_with_your_own_study_opens_with_every_command(make_objective, tmp_path):
    """The README's own-Optuna-study recipe: no study name in the config, a study named as the
    caller likes; the run folder records that name, so every reader finds the study."""
    from click.testing import CliRunner

    from wpl_nas.cli import cli

    objective = make_objective("mine", epochs=1)
    study = optuna.create_study(study_name="my own name", direction="maximize",
                                storage=f"sqlite:///{objective.run_dir / 'study.db'}")
    study.optimize(objective, n_trials=2, callbacks=[objective.retention_callback(), objective.anatomy_callback()])
    for command in ("report", "anatomy", "select", "export"):
        result = CliRunner().invoke(cli, [command, str(objective.run_dir)])
        assert result.exit_code == 0, (command, result.output)
    assert wpl_nas.load_run(objective.run_dir).study.study_name == "my own name"
