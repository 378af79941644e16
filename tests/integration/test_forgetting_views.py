"""What a search shows of forgetting, read back from real files: TensorBoard's runs, Time Series
groups and HPARAMS table, the pool's measures and the dashboard's notes, on a study whose third
trial repeats the first one's architecture."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest
from conftest import hparams_table
from optuna_dashboard import get_note
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

from wpl_nas import SupernetObjective
from wpl_nas.callbacks import SEARCH_RUN
from wpl_nas.evaluation import retention_matrix


@pytest.fixture(scope="module")
def repeated(tiny_space_file, data_dir, tmp_path_factory):
    """Three trials on a SupernetObjective with every callback; trial 2 trains trial 0's
    architecture again."""
    run_dir = tmp_path_factory.mktemp("views") / "run"
    objective = SupernetObjective(run_dir=run_dir, space=str(tiny_space_file), data_dir=str(data_dir), epochs=1,
                                  batch_size=256, device="cpu", eval_samples=200, strategy="naive")
    tensorboard = objective.tensorboard_callback()
    callbacks = [objective.retention_callback(), objective.anatomy_callback(probe_size=64), tensorboard]
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=3),
                                storage=f"sqlite:///{run_dir / 'study.db'}")
    study.optimize(objective, n_trials=2, callbacks=callbacks)
    study.enqueue_trial(study.trials[0].params)
    study.optimize(objective, n_trials=1, callbacks=callbacks)
    tensorboard.close()
    objective.close()
    archs = [t.user_attrs["arch"] for t in study.trials]
    assert archs[2] == archs[0] != archs[1]
    return SimpleNamespace(study=study, tb=run_dir / "tb", attrs=study.user_attrs, matrix=retention_matrix(study))


@pytest.mark.slow
def test_the_repeat_replaces_its_architecture_in_the_pool_and_joining_is_told_apart(repeated):
    attrs = repeated.attrs
    assert attrs["pool"] == [1, 2] and attrs["pool_replaced"] == {"0": 2}
    assert attrs["pool_joined"] == [2] and attrs["pool_left"] == [0]
    assert repeated.matrix[0].keys() == {0, 1}  # trial 0 is no longer re-scored
    # Over the earlier member (trial 1) alone: its latest score, and what training trial 2 cost it.
    rows = repeated.matrix[1]
    assert attrs["earlier_retained_mean"] == pytest.approx(rows[2])
    assert attrs["forgetting_this_trial"] == pytest.approx(rows[1] - rows[2])
    assert attrs["latest_forgetting"]["1"] == pytest.approx(rows[1] - rows[2])


@pytest.mark.slow
def test_tensorboard_runs_groups_and_hparams_rows(repeated):
    runs = EventMultiplexer().AddRunsFromDirectory(str(repeated.tb))
    runs.Reload()
    # No run named "." (nothing is written to the log folder itself), one run per trial under trials/.
    assert sorted(runs.Runs()) == [SEARCH_RUN, "trials/trial_0000", "trials/trial_0001", "trials/trial_0002"]
    search = runs.GetAccumulator(SEARCH_RUN)
    scalars = set(search.Tags()["scalars"])
    assert {"retained/mean_acc", "retained/earlier_mean_acc", "forgetting/mean", "forgetting/earlier_mean",
            "forgetting/this_trial", "stability/kendall_tau", "train/loss", "val/acc"} <= scalars
    assert [e.step for e in search.Scalars("forgetting/this_trial")] == [1, 2]  # none before an earlier member
    assert [e.step for e in search.Images("forgetting/matrix")] == [0, 1, 2]
    assert {"trial/cell"} <= set(search.Tags()["images"]) and "trial/arch/text_summary" in search.Tags()["tensors"]
    # TensorBoard's Time Series page lists tag groups in sorted order and opens the first two: the
    # search's retained quality and forgetting (before the final selection, which adds `final`).
    groups = sorted({tag.split("/", 1)[0] for run in runs.Runs()
                     for kind in ("scalars", "images") for tag in runs.GetAccumulator(run).Tags()[kind]})
    assert groups[:2] == ["forgetting", "retained"]
    # One line per candidate in the retained/candidate_acc chart: each from its own training on.
    assert [e.step for e in runs.GetAccumulator("trials/trial_0001").Scalars("retained/candidate_acc")] == [1, 2]
    assert [e.step for e in runs.GetAccumulator("trials/trial_0000").Scalars("retained/candidate_acc")] == [0, 1]

    # HPARAMS, as TensorBoard's hparams backend computes it: each row shows its trial's latest values.
    table = hparams_table(repeated.tb)
    attrs, trials = repeated.attrs, repeated.study.trials
    assert set(table) == {"trials/trial_0000", "trials/trial_0001", "trials/trial_0002"}
    for t in trials:
        row = table[f"trials/trial_{t.number:04d}"]
        assert row["trial/score_at_training"] == pytest.approx(t.user_attrs["score_at_training"])
        assert row["retained/candidate_acc"] == pytest.approx(attrs["latest_rescore"][str(t.number)])
        assert row["forgetting/candidate"] == pytest.approx(attrs["latest_forgetting"][str(t.number)])
    assert table["trials/trial_0000"]["retained/candidate_acc"] == pytest.approx(repeated.matrix[0][1])


@pytest.mark.slow
def test_dashboard_notes_carry_each_trials_latest_retained_score(repeated):
    study, attrs = repeated.study, repeated.attrs

    def note(number: int) -> str:
        trial = study.trials[number]
        return get_note(SimpleNamespace(study=study, storage=study._storage, _trial_id=trial._trial_id))

    member = note(1)
    assert f"Retained score {attrs['latest_rescore']['1']:.4f} after trial 2" in member
    assert f"forgetting {attrs['latest_forgetting']['1']:+.4f}" in member and "In the retained pool" in member
    (cell,) = optuna.artifacts.get_all_artifact_meta(study.trials[1], storage=study._storage)
    assert f"](/artifacts/{study._study_id}/{study.trials[1]._trial_id}/{cell.artifact_id})" in member
    assert "Trial 2 trained the same architecture again and replaced it" in note(0)
    assert "replaced by 2: same architecture" in get_note(study)  # the study's note says who left and why
