"""Measuring less often: the retained pool re-scored every K trials (joins in between), and candidates
scored after their last epoch only (``--rescore-every``, ``--no-epoch-scores``)."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import make_trainer

import wpl_nas
from wpl_nas.errors import ConfigError
from wpl_nas.evaluation import RetainedPool


def _scored(pool: RetainedPool, after: int, scores: dict[int, float], *, rescored: bool = True) -> None:
    pool.record(after, scores, rescored=rescored)


def test_a_join_is_not_a_rescore_so_the_step_forgetting_spans_the_gap():
    """Re-scores after trials 1 and 3, a join after 2: at the re-score after 3 the earlier members are
    those of the re-score after 1 (not the lone joiner of trial 2), and their step forgetting is the
    drop since then."""
    pool = RetainedPool(best=5, recent=3)
    pool.add(0, "a", 0.9)
    _scored(pool, 0, {0: 0.9}, rescored=False)  # trial 0: a join only
    pool.add(1, "b", 0.8)
    _scored(pool, 1, {0: 0.85, 1: 0.8})  # trial 1: a re-score
    # the first re-score follows a join, not a re-score: there is none before it, everyone joined
    assert pool.changes(1).previous is None and pool.changes(1).joined == [0, 1]
    pool.add(2, "c", 0.7)
    _scored(pool, 2, {2: 0.7}, rescored=False)  # trial 2: a join only
    pool.add(3, "d", 0.6)
    _scored(pool, 3, {0: 0.75, 1: 0.7, 2: 0.65, 3: 0.6})

    assert [pool.recorded(j) and j not in pool.joins for j in range(4)] == [False, True, False, True]
    assert all(pool.recorded(j) for j in range(4))
    changes = pool.changes(3)
    assert changes.previous == 1
    assert changes.earlier == [0, 1] and changes.joined == [2, 3] and changes.left == []
    step = pool.step_measures(3)
    assert step["forgetting_this_trial"] == pytest.approx(((0.85 - 0.75) + (0.8 - 0.7)) / 2)
    assert step["earlier_forgetting_mean"] == pytest.approx(((0.9 - 0.75) + (0.8 - 0.7)) / 2)
    # The joins go through the state dict; a state from before them reads as all re-scores.
    restored = RetainedPool(best=1, recent=1)
    restored.load_state_dict(pool.state_dict())
    assert restored.joins == {0, 2} and restored.changes(3) == changes
    old = {k: v for k, v in pool.state_dict().items() if k != "joins"}
    restored.load_state_dict(old)
    assert restored.joins == set() and restored.changes(3).previous == 2


def test_a_join_adds_its_own_csv_row_and_the_appended_rows_build_the_whole_file():
    pool = RetainedPool(best=2, recent=1)
    text = "after_trial,trial,score,score_at_training,forgetting\n"
    for number in range(5):
        pool.add(number, f"arch{number}", 0.5 + number / 100)
        own = {number: pool.entries[number].score}
        if number % 2:
            _scored(pool, number, {m: 0.4 for m in pool.members() if m != number} | own)
        else:
            _scored(pool, number, own, rescored=False)
        text += pool.csv_rows(number)
    assert text == pool.to_csv()
    assert [len(pool.csv_rows(j).splitlines()) for j in (0, 2, 4)] == [1, 1, 1]


@pytest.mark.parametrize(("every", "trials", "rescored"), [(1, 5, [0, 1, 2, 3, 4]), (2, 5, [1, 3, 4]),
                                                             (3, 5, [2, 4]), (3, 6, [2, 5]), (7, 5, [4])])
def test_which_positions_rescore_depends_on_the_count_of_finished_trials_alone(every, trials, rescored):
    from types import SimpleNamespace

    objective = SimpleNamespace(config=wpl_nas.SearchConfig(rescore_every=every, trials=trials))
    rule = wpl_nas.SupernetObjective.rescores_after
    assert [p for p in range(trials) if rule(objective, p)] == rescored  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -2])
def test_rescore_every_below_one_is_refused_naming_the_value(bad):
    with pytest.raises(ConfigError, match=f"rescore_every.*{bad}"):
        wpl_nas.SearchConfig(rescore_every=bad).validate()


def test_no_epoch_scores_with_a_pruner_is_refused():
    with pytest.raises(ConfigError, match=r"pruner='median'.*epoch_scores=False"):
        wpl_nas.SearchConfig(epoch_scores=False, pruner="median").validate()
    wpl_nas.SearchConfig(epoch_scores=False, pruner="none").validate()


def test_both_options_may_change_on_resume():
    assert {"rescore_every", "epoch_scores"} <= set(wpl_nas.SearchConfig.may_change_on_resume())


def test_scoring_after_the_last_epoch_only_trains_the_same_weights(tiny_space, mnist1d):
    """Two epochs with and without the per-epoch score: the same weights and final score, one score
    reported (the last epoch's) instead of two."""
    arch = tiny_space.sample(random.Random(0))
    runs = {}
    for epoch_scores in (True, False):
        trainer = make_trainer(tiny_space, mnist1d, "wpl", epochs=2)
        trainer.epoch_scores = epoch_scores
        reported: list[tuple[int, float]] = []

        def report(epoch: int, score: float, reported: list[tuple[int, float]] = reported) -> bool:
            reported.append((epoch, score))
            return False

        result = trainer.train(arch, trial_index=0, on_epoch=report)
        runs[epoch_scores] = (result, reported, {k: v.clone() for k, v in trainer.supernet.state_dict().items()})
    (every, every_reported, every_state), (last, last_reported, last_state) = runs[True], runs[False]
    assert len(every_reported) == 2 and last_reported == [every_reported[-1]]
    assert last.epoch_scores == [every.score] and last.score == every.score and last.loss == every.loss
    assert every_state.keys() == last_state.keys()
    assert all(torch.equal(every_state[k], last_state[k]) for k in every_state)
