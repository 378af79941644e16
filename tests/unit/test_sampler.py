"""ForgettingAwareSampler: the harm measure, Optuna's sampler contract, determinism, its knob."""

from __future__ import annotations

import math
import random

import optuna
import pytest
from optuna.trial import TrialState

from wpl_nas import Architecture, ForgettingAwareSampler
from wpl_nas.sampler import harm, op_weights
from wpl_nas.supernet import Supernet


def fake_score(trial: optuna.Trial, space) -> float:
    """A cheap objective over the space's edges: how many convolutions, plus a seeded jitter."""
    arch = space.suggest(trial)
    convs = sum(op.startswith("conv") for op in arch.values())
    return convs + random.Random(str(arch)).random()


def run(sampler: optuna.samplers.BaseSampler, space, n: int = 12, **study_kw) -> optuna.Study:
    study = optuna.create_study(direction="maximize", sampler=sampler, **study_kw)
    study.optimize(lambda t: fake_score(t, space), n_trials=n)
    return study


def probe(space) -> Supernet:
    return Supernet(space, in_channels=1, num_classes=2)


def test_op_weights_count_parameters_of_each_op_on_each_edge(tiny_space):
    weights = op_weights(probe(tiny_space))
    # Only ops with parameters appear; on the tiny space that is conv_5, on every edge.
    assert set(weights) == {(label, "conv_5") for label in tiny_space.choices}
    assert all(count > 0 for count in weights.values())


def test_harm_is_zero_for_no_and_full_overlap_and_largest_in_between(tiny_space):
    net = probe(tiny_space)
    weights, units = op_weights(net), net.path_units
    convs = Architecture.from_ops({e: "conv_5" for e in tiny_space.edges})
    skips = Architecture.from_ops({e: "skip_connect" for e in tiny_space.edges})
    half = Architecture.from_ops({e: "conv_5" if e[1] == 3 else "skip_connect" for e in tiny_space.edges})
    assert harm(convs, [convs], units, weights) == 0.0  # the same path: retrained, not overwritten
    assert harm(skips, [convs], units, weights) == 0.0  # no weights in common
    partial = harm(half, [convs], units, weights)
    assert 0.0 < partial <= 1.0
    assert harm(half, [], units, weights) == 0.0


def test_strength_zero_is_the_inner_sampler_exactly(tiny_space):
    plain = run(optuna.samplers.TPESampler(seed=3, n_startup_trials=4), tiny_space)
    wrapped = run(ForgettingAwareSampler(optuna.samplers.TPESampler(seed=3, n_startup_trials=4), space=tiny_space,
                                         strength=0.0), tiny_space)
    assert [t.params for t in wrapped.trials] == [t.params for t in plain.trials]


def test_seeded_runs_repeat_and_reseed_changes_them(tiny_space):
    def sampler() -> ForgettingAwareSampler:
        return ForgettingAwareSampler(optuna.samplers.RandomSampler(seed=1), space=tiny_space, seed=1)

    first, second = run(sampler(), tiny_space), run(sampler(), tiny_space)
    assert [t.params for t in first.trials] == [t.params for t in second.trials]
    reseeded = sampler()
    reseeded.reseed_rng()
    assert [t.params for t in run(reseeded, tiny_space).trials] != [t.params for t in first.trials]


def mean_harm(study: optuna.Study, space) -> float:
    """Mean harm of each trial's architecture to the best 5 trials before it."""
    net = probe(space)
    weights, harms = op_weights(net), []
    trials = study.trials
    for i in range(1, len(trials)):
        best = sorted(trials[:i], key=lambda t: -t.value)[:5]
        arch = Architecture.from_ops({e: trials[i].params[f"{e[0]}->{e[1]}"] for e in space.edges})
        harms.append(harm(arch, [Architecture.from_ops({e: t.params[f"{e[0]}->{e[1]}"] for e in space.edges})
                                 for t in best], net.path_units, weights))
    return sum(harms) / len(harms)


def test_the_knob_steers_towards_less_harmful_candidates(tiny_space):
    n = 30
    plain = run(optuna.samplers.RandomSampler(seed=0), tiny_space, n=n)
    steered = run(ForgettingAwareSampler(optuna.samplers.RandomSampler(seed=0), space=tiny_space,
                                         strength=math.inf, seed=0), tiny_space, n=n)
    assert mean_harm(steered, tiny_space) < 0.5 * mean_harm(plain, tiny_space)


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_works_with_storages_pruners_and_load_if_exists(tiny_space, tmp_path, storage):
    if storage == "sqlite":
        url: object = f"sqlite:///{tmp_path / 's.db'}"
    else:
        url = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.log")))

    def objective(trial: optuna.Trial) -> float:
        value = fake_score(trial, tiny_space)
        for step in range(3):
            trial.report(value * (step + 1), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    for _ in range(2):  # the second round reopens the study with a fresh sampler
        study = optuna.create_study(study_name="s", storage=url, load_if_exists=True, direction="maximize",
                                    sampler=ForgettingAwareSampler(space=tiny_space, seed=0),
                                    pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
        study.optimize(objective, n_trials=8)
    states = [t.state for t in study.trials]
    assert len(states) == 16 and TrialState.PRUNED in states and TrialState.COMPLETE in states


def test_multi_objective_study_with_nsga2_inside(tiny_space):
    sampler = ForgettingAwareSampler(optuna.samplers.NSGAIISampler(seed=0, population_size=4), space=tiny_space,
                                     seed=0)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(lambda t: (fake_score(t, tiny_space), len(t.params)), n_trials=10)
    assert len(study.trials) == 10 and sampler.protected(study)


@pytest.mark.parametrize(("kw", "message"), [({"n_candidates": 0}, "n_candidates=0"),
                                             ({"strength": -1.0}, "strength=-1.0"),
                                             ({"protect": 0}, "protect=0")])
def test_bad_options_name_the_value(tiny_space, kw, message):
    with pytest.raises(ValueError, match=message):
        ForgettingAwareSampler(space=tiny_space, **kw)
