"""A search of your own data, registered by function, then its retraining with the data's recipe."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest

import wpl_nas
from wpl_nas.retrain import retrain_run

SMALL_MLP = """\
kind: mlp
name: small-mlp
description: one hidden layer, 16 or 32 units, relu or tanh
layers: 1
widths: [16, 32]
activations: [relu, tanh]
"""


@pytest.mark.slow
def test_a_search_of_your_own_data_by_name_beats_chance(own_data: str, tmp_path: Path) -> None:
    space = tmp_path / "small-mlp.yaml"
    space.write_text(SMALL_MLP)
    config = wpl_nas.SearchConfig(dataset=own_data, space=str(space), trials=2, epochs=2, batch_size=32,
                                  device="cpu", runs_dir=str(tmp_path / "runs"), study_name="own")
    result = wpl_nas.run_search(config, progress=False, command=["test"])
    trials = result.study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert result.best_score > 0.5  # four classes: chance is 0.25
    assert dataclasses.asdict(wpl_nas.load_run(result.run_dir).config)["dataset"] == own_data
    retrained = retrain_run(result.run_dir, epochs=1, progress=False)  # with the recipe registered with the data
    assert retrained.test_score > 0.5
