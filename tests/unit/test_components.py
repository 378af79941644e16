"""Small components: registry, retained pool, checkpoints, Optuna helpers, devices."""

from __future__ import annotations

import math

import optuna
import pytest
import torch

import wpl_nas
from wpl_nas.errors import ConfigError
from wpl_nas.evaluation import RetainedPool
from wpl_nas.registry import Registry
from wpl_nas.study import GRID_LIMIT, PRUNERS, SAMPLERS, check_storage_url, create_pruner, create_sampler
from wpl_nas.tracking import capture_rng, load_checkpoint, restore_rng, save_checkpoint


def test_registry_errors_suggest_and_list():
    reg: Registry[int] = Registry("widget")
    reg.add("alpha", 1)
    reg.add("beta", 2)
    assert reg.get("beta") == 2 and reg.names() == ["alpha", "beta"] and "alpha" in reg
    with pytest.raises(ConfigError) as info:
        reg.get("alpah")
    assert str(info.value) == "unknown widget 'alpah' (did you mean 'alpha'?); valid choices: alpha, beta"
    with pytest.raises(ValueError, match="already registered"):
        reg.add("alpha", 3)


def test_pool_keeps_best_and_recent_and_measures_forgetting():
    pool = RetainedPool(best=2, recent=1)
    for trial, score in enumerate([0.5, 0.9, 0.7, 0.2]):
        pool.add(trial, f"arch{trial}", score)
    assert pool.members() == [1, 2, 3]  # best two (1, 2) + the latest (3)
    pool.record(3, {1: 0.8, 2: 0.7, 3: 0.2})
    assert pool.entries[1].forgetting == pytest.approx(0.1)
    summary = pool.summary()
    assert summary["forgetting_max"] == pytest.approx(0.1)
    assert summary["forgetting_mean"] == pytest.approx(0.1 / 3)
    assert summary["retained_mean"] == pytest.approx((0.8 + 0.7 + 0.2) / 3)
    assert pool.matrix()[1] == {3: 0.8} and pool.matrix()[0] == {}
    clone = RetainedPool(best=9, recent=9)
    clone.load_state_dict(pool.state_dict())
    assert clone.state_dict() == pool.state_dict() and clone.members() == pool.members()


def test_empty_pool_summary_is_nan():
    assert all(math.isnan(v) for v in RetainedPool(best=1, recent=1).summary().values())


def test_checkpoint_is_replaced_atomically(tmp_path, monkeypatch):
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint(path, {"x": torch.arange(3)})
    assert torch.equal(load_checkpoint(path)["x"], torch.arange(3))

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {"x": torch.arange(5)})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["x"], torch.arange(3))  # the old checkpoint survives
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # and no half-written file stays


def test_rng_states_round_trip():
    state = capture_rng()
    first = torch.rand(3)
    restore_rng(state)
    assert torch.equal(torch.rand(3), first)


def test_samplers_pruners_and_storage(tiny_space):
    assert set(SAMPLERS.names()) == {"tpe", "random", "nsga2", "grid", "forgetting-aware"}
    assert set(PRUNERS.names()) == {"none", "median", "halving"}
    study = optuna.create_study(sampler=create_sampler("grid", tiny_space, seed=0),
                                pruner=create_pruner("median"), direction="maximize")
    seen = set()
    for _ in range(5):
        trial = study.ask()
        seen.add(tiny_space.suggest(trial))
        study.tell(trial, 0.0)
    assert len(seen) == 5  # the grid never repeats
    nb201 = wpl_nas.load_space("nb201")
    assert nb201.size > GRID_LIMIT
    with pytest.raises(ConfigError, match="15,625"):
        create_sampler("grid", nb201, seed=0)
    check_storage_url("sqlite:///runs/x/study.db")
    # A server URL is checked without connecting; its driver must be importable, or the error names it.
    import importlib.util

    if importlib.util.find_spec("psycopg2") is not None:
        check_storage_url("postgresql+psycopg2://user:pw@localhost/db")
    else:
        with pytest.raises(ConfigError, match="'psycopg2', which is not installed"):
            check_storage_url("postgresql+psycopg2://user:pw@localhost/db")
    with pytest.raises(ConfigError, match="in-memory"):
        check_storage_url("sqlite:///:memory:")
    for bad in ("runs/study.db", "nosuchdb://x"):
        with pytest.raises(ConfigError, match="invalid storage URL"):
            check_storage_url(bad)


def test_resolve_device():
    assert wpl_nas.resolve_device("cpu") == torch.device("cpu")
    assert wpl_nas.resolve_device("auto").type in {"cpu", "cuda"}
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        wpl_nas.resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            wpl_nas.resolve_device("cuda:0")


def test_space_and_data_dimensions_must_match(mnist1d):
    with pytest.raises(ConfigError, match="space 'nb201' is for 2-D inputs, but dataset 'mnist1d' is 1-D"):
        wpl_nas.build_supernet("nb201", mnist1d)


def test_kendall_tau_matches_scipy_with_ties_and_refuses_mismatched_lists():
    import random

    from scipy.stats import kendalltau

    from wpl_nas.evaluation import kendall_tau

    rng = random.Random(0)
    for _ in range(20):
        a = [rng.choice([0.1, 0.2, 0.3, 0.4]) for _ in range(9)]
        b = [rng.choice([0.5, 0.6, 0.7]) for _ in range(9)]
        assert kendall_tau(a, b) == pytest.approx(kendalltau(a, b).statistic)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert math.isnan(kendall_tau([1, 1], [1, 2]))
    with pytest.raises(ValueError, match="2 and 3"):
        kendall_tau([1, 2], [1, 2, 3])


def test_retention_measures_by_hand():
    from wpl_nas.evaluation import MEASURES, retention_measures

    # Three candidates: one forgot 0.2, one gained 0.1, one not yet re-scored.
    m = retention_measures([[0.9, 0.8, 0.7], [0.6, 0.7], [0.5]], chance=0.1)
    assert set(m) == set(MEASURES)
    assert m["retained_mean"] == pytest.approx((0.7 + 0.7 + 0.5) / 3)
    assert m["forgetting_mean"] == pytest.approx((0.2 - 0.1 + 0.0) / 3)
    assert m["forgetting_max"] == pytest.approx(0.2)
    assert m["backward_transfer"] == pytest.approx(-m["forgetting_mean"])
    assert m["rho"] == pytest.approx(((0.6 / 0.8 - 1) + (0.6 / 0.5 - 1) + 0.0) / 3)
    assert m["rank_tau"] == pytest.approx(2 / math.sqrt(6))  # (0.9, 0.6, 0.5) vs (0.7, 0.7, 0.5): τ-b, one tie
    assert math.isnan(retention_measures([[0.9, 0.8]])["rho"])  # no chance level
    assert all(math.isnan(v) for v in retention_measures([]).values())
    with pytest.raises(ValueError, match="at least the score"):
        retention_measures([[]])


def test_pool_history_and_files():
    pool = RetainedPool(best=1, recent=1)
    pool.add(0, "a", 0.9)
    pool.record(0, {0: 0.9})
    pool.add(1, "b", 0.5)
    pool.record(1, {0: 0.8, 1: 0.5})
    pool.add(2, "c", 0.7)
    pool.record(2, {0: 0.85, 2: 0.7})
    assert pool.entries[0].history == [0.9, 0.8, 0.85] and pool.entries[1].history == [0.5]
    text = pool.to_csv()
    lines = text.splitlines()  # long format: one row per re-score, by the trial it followed
    assert lines[0] == "after_trial,trial,score,score_at_training,forgetting"
    assert [line.split(",")[:3] for line in lines[1:]] == [
        ["0", "0", "0.9"], ["1", "0", "0.8"], ["1", "1", "0.5"], ["2", "0", "0.85"], ["2", "2", "0.7"]]
    assert lines[2].split(",")[3:] == ["0.9", str(0.9 - 0.8)]  # its score at training, its forgetting then
    # Each trial appends its own rows: the file built row by row is the file written whole.
    assert lines[0] + "\n" + "".join(pool.csv_rows(j) for j in range(3)) == text
    data = pool.to_json(after_trial=2)
    # The pool now (and who left at this re-score: trial 1), with latest scores; the rows are retention.csv's.
    assert data["members"] == [0, 2] and data["left"] == [1]
    assert [(c["trial"], c["latest"]) for c in data["candidates"]] == [(0, 0.85), (1, 0.5), (2, 0.7)]
    assert all("rescores" not in c for c in data["candidates"])
