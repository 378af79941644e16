"""Final selection: at the end of a search every candidate is re-scored on the final supernet,
recorded in the run folder, the study, TensorBoard and the dashboard's note, and chosen by."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import hparams_table, search_tiny
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import wpl_nas
from wpl_nas.cli import cli
from wpl_nas.export import choose_trial
from wpl_nas.objective import SupernetObjective
from wpl_nas.run_folder import FINAL_CSV, FINAL_JSON
from wpl_nas.selection import load_final


@pytest.fixture(scope="module")
def searched(tiny_space_file, data_dir, tmp_path_factory) -> wpl_nas.SearchResult:
    return search_tiny(tiny_space_file, data_dir, tmp_path_factory.mktemp("runs"), trials=5, eval_samples=200,
                       sampler="random", strategy="naive")


@pytest.mark.slow
def test_every_candidate_is_rescored_on_the_final_supernet_and_recorded(searched):
    run_dir, study = searched.run_dir, searched.study
    final = load_final(run_dir)
    assert final is not None and final == searched.final and final.after_trial == 4
    archs = {t.user_attrs["arch"]: t.number for t in study.trials}  # a repeated architecture: its last trial
    assert {r["arch"]: r["trial"] for r in final.rows} == archs
    # The scores are the final supernet's: a fresh read-only objective on the checkpoint agrees exactly.
    objective = SupernetObjective(wpl_nas.load_run(run_dir).config, run_dir=run_dir)
    for row in final.rows:
        assert row["final"] == objective.score(row["arch"])
        assert row["at_training"] == study.trials[row["trial"]].user_attrs["score_at_training"]
        assert row["forgetting"] == pytest.approx(row["at_training"] - row["final"])
    # The study, the CSV, the summary and the chosen architecture say the same.
    assert study.user_attrs["final_rescore"] == {str(r["trial"]): r["final"] for r in final.rows}
    best = final.best("final")
    assert study.user_attrs["final_best_trial"] == best["trial"]
    assert all(best["final"] >= r["final"] for r in final.rows)
    by_training = max(study.trials, key=lambda t: (t.value, -t.number))  # the default choice
    assert str(searched.best_arch) == by_training.user_attrs["arch"] and searched.best_score == by_training.value
    assert len((run_dir / FINAL_CSV).read_text().splitlines()) == len(final.rows) + 1
    assert json.loads((run_dir / FINAL_JSON).read_text())["best_final_trial"] == best["trial"]
    assert "re-scored on the final supernet" in searched.summary()
    # TensorBoard: one final score at each candidate's trial number.
    events = EventAccumulator(str(run_dir / "tb" / "search"))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("final/acc")}
    assert logged == pytest.approx({r["trial"]: r["final"] for r in final.rows})
    assert {"final/forgetting_mean", "final/stability_tau"} <= set(events.Tags()["scalars"])
    # ... and in each candidate's HPARAMS row, its final score beside its score at training.
    table = hparams_table(run_dir / "tb")
    assert {r["trial"]: table[f"trials/trial_{r['trial']:04d}"]["final/candidate_acc"] for r in final.rows} \
        == pytest.approx({r["trial"]: r["final"] for r in final.rows})


@pytest.mark.slow
def test_export_chooses_by_score_at_training_unless_told_by_final(searched):
    run = wpl_nas.load_run(searched.run_dir)
    final = load_final(searched.run_dir)
    assert final is not None
    by_training = max(run.study.trials, key=lambda t: (t.value, -t.number))
    by_final = final.best("final")["trial"]
    assert choose_trial(run, None).number == by_training.number
    assert choose_trial(run, None, by="final").number == by_final
    result = CliRunner().invoke(cli, ["export", str(searched.run_dir), "--choose-by", "final"])
    assert result.exit_code == 0 and f"trial {by_final}:" in result.output, result.output
    bad = CliRunner().invoke(cli, ["export", str(searched.run_dir), "--choose-by", "luck"])
    assert bad.exit_code == 2 and "final" in bad.output and "training" in bad.output


@pytest.mark.slow
def test_select_rescores_the_top_k_and_a_longer_search_takes_them_again(searched, tiny_space_file, data_dir,
                                                                        tmp_path):
    run_dir = Path(shutil.copytree(searched.run_dir, tmp_path / searched.run_dir.name))  # this test changes it
    result = CliRunner().invoke(cli, ["select", str(run_dir), "--top-k", "2"])
    assert result.exit_code == 0, result.output
    final = load_final(run_dir)
    assert final is not None and len(final.rows) == 2
    training = sorted((t.value for t in searched.study.trials), reverse=True)
    assert sorted((r["at_training"] for r in final.rows), reverse=True) == training[:2]
    # The run chooses by the score at training (the default): select says so rather than "chosen".
    by_training = max(searched.study.trials, key=lambda t: (t.value, -t.number)).number
    assert f"the run chooses by the score at training: trial {by_training}" in result.output
    assert f"best on the final supernet: trial {final.best('final')['trial']}" in result.output
    assert CliRunner().invoke(cli, ["select", str(run_dir), "--top-k", "-1"]).exit_code == 2
    # Extending the study moves the supernet: the search ends by re-scoring everything again.
    longer = search_tiny(tiny_space_file, data_dir, tmp_path, trials=6, eval_samples=200, sampler="random",
                         strategy="naive")
    final = load_final(run_dir)
    assert final is not None and final.after_trial == 5
    assert len(final.rows) == len({t.user_attrs["arch"] for t in longer.study.trials})


def test_batch_norm_normalises_with_the_batch_so_rescores_need_no_recalibration(tiny_space, mnist1d):
    """Re-scoring on the final supernet needs no batch-norm recalibration: no running statistics exist
    that another candidate could have left behind."""
    net = wpl_nas.build_supernet(tiny_space, mnist1d)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(m.running_mean is None and not m.track_running_stats for m in norms)
