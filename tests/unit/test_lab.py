"""The forgetting lab: scenarios, measures, seeds, and what a run writes (real training, tiny data)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import wpl_nas
from wpl_nas.errors import ConfigError
from wpl_nas.lab import SCENARIOS, LabConfig, SeedOutcome, forgetting_metrics
from wpl_nas.lab.config import load_lab_config
from wpl_nas.lab.metrics import aggregate
from wpl_nas.lab.runner import resolve_strategies
from wpl_nas.lab.scenarios import chain_space, default_arch, model_a, model_b
from wpl_nas.strategies import STRATEGIES

# --- two-model ------------------------------------------------------------------------------


def test_two_model_chain_shares_exactly_the_first_layers():
    net = wpl_nas.Supernet(chain_space(channels=8, dims=1), in_channels=1, num_classes=10, heads=2)
    a = set(net.parameter_names_of(model_a()))
    for shared in (1, 2, 3, 4):
        b = set(net.parameter_names_of(model_b(shared)))
        common = a & b
        edges = {n.split(".")[4] for n in common if ".edges." in n}
        assert edges == {f"{i}->{i + 1}" for i in range(shared - 1)}, shared
        assert any(n.startswith("stem.") for n in common)  # layer 1 is always shared
        assert not any(n.startswith("heads.") for n in common)  # each model has its own head
    assert model_a().head == 0 and model_b(2).head == 1
    def convs(arch: wpl_nas.Architecture) -> int:
        return sum("conv" in op for _, _, op in net.space.active_edges(arch))

    assert convs(model_a()) == 3 and convs(model_b(1)) == 5  # 4 and 6 layers with the stem


# --- sequence, split, permuted ------------------------------------------------------------------


def test_split_builds_distinct_tasks_with_their_own_heads(data_dir, mnist1d, tiny_space_file):
    config = LabConfig(scenario="split", space=str(tiny_space_file), tasks=5, train_samples=1000, eval_samples=50)
    scenario = SCENARIOS.get("split")()
    config = scenario.resolve(config, mnist1d)
    (plan,) = scenario.plans(config, mnist1d, 0)
    assert plan.heads == 5 and plan.num_classes == 2 and len(plan.models) == 5
    assert [m.arch.head for m in plan.models] == [0, 1, 2, 3, 4]
    assert len({m.arch.edges for m in plan.models}) == 1  # one architecture for every task
    x_all = mnist1d.train.tensors[0][:1000]
    seen: set[int] = set()
    for t, model in enumerate(plan.models):
        x, y = model.train.tensors
        assert set(y.tolist()) == {0, 1} and model.chance == 0.5  # labels remapped per task
        rows = {i for i, row in enumerate(x_all) for r in x[:5] if torch.equal(row, r)}
        labels = set(mnist1d.train.tensors[1][sorted(rows)].tolist())
        assert labels <= {2 * t, 2 * t + 1}
        assert not seen & {2 * t, 2 * t + 1}
        seen |= {2 * t, 2 * t + 1}
        assert len(model.eval_set[1]) == 50
    assert sum(len(m.train) for m in plan.models) == 1000


def test_permuted_builds_permuted_tasks(data_dir, mnist1d, tiny_space_file):
    config = LabConfig(scenario="permuted", space=str(tiny_space_file), tasks=3, train_samples=300)
    scenario = SCENARIOS.get("permuted")()
    (plan,) = scenario.plans(scenario.resolve(config, mnist1d), mnist1d, 0)
    assert plan.heads == 3 and plan.num_classes == 10
    xs = [m.train.tensors[0] for m in plan.models]
    for model in plan.models:
        assert torch.equal(model.train.tensors[1], plan.models[0].train.tensors[1])  # all classes, same labels
    for i in range(3):
        # A permutation of the features of the same samples: same values, other order.
        assert torch.equal(xs[i].sort(-1).values, mnist1d.train.tensors[0][:300].sort(-1).values)
        for j in range(i):
            assert not torch.equal(xs[i], xs[j])
    (again,) = scenario.plans(scenario.resolve(config, mnist1d), mnist1d, 0)
    assert torch.equal(again.models[2].train.tensors[0], xs[2])  # fixed by the seed


def test_default_arch_is_all_conv(tiny_space):
    assert set(dict(default_arch(tiny_space)).values()) == {"conv_5"}
    assert set(dict(default_arch(wpl_nas.load_space("nb201"))).values()) == {"nor_conv_3x3"}


# --- measures and configuration -------------------------------------------------------------------
def test_forgetting_metrics_by_hand():
    m = forgetting_metrics([[0.9], [0.6, 0.8], [0.5, 0.7, 0.95]], [0.1, 0.1, 0.1])
    assert m["first_before"] == pytest.approx((0.9 + 0.8) / 2)
    assert m["first_after"] == pytest.approx((0.5 + 0.7) / 2)
    assert m["forgetting_mean"] == pytest.approx((0.4 + 0.1) / 2) and m["forgetting_max"] == pytest.approx(0.4)
    assert m["rho"] == pytest.approx(((0.4 / 0.8 - 1) + (0.6 / 0.7 - 1)) / 2)
    assert m["last_acc"] == 0.95
    # A model that never beat chance has no ratio.
    assert math.isnan(forgetting_metrics([[0.1], [0.1, 0.9]], [0.1, 0.1])["rho"])
    with pytest.raises(ValueError, match="row j with j"):
        forgetting_metrics([[0.9], [0.6]], [0.1, 0.1])


def test_aggregate_mean_and_std_over_seeds():
    def outcome(seed: int, final: float) -> SeedOutcome:
        return SeedOutcome("naive", "", {}, seed, ["a", "b"], ["x", "y"], [0.5, 0.5], [[0.9], [final, 0.8]],
                           [0, 1], [0.9, final], 1.0, 10, 0)

    (row,) = aggregate([outcome(0, 0.7), outcome(1, 0.8)])
    assert row.seeds == 2
    assert row.mean["forgetting_mean"] == pytest.approx(0.15)
    assert row.std["forgetting_mean"] == pytest.approx(math.sqrt(2) * 0.05)
    assert row.mean["ms_per_step"] == pytest.approx(100.0)
    (single,) = aggregate([outcome(0, 0.7)])
    assert math.isnan(single.std["forgetting_mean"])


def test_strategies_all_comes_from_the_registry():
    assert resolve_strategies("all") == STRATEGIES.names()
    assert resolve_strategies(" wpl , naive,wpl") == ["wpl", "naive"]
    with pytest.raises(ConfigError, match=r"unknown strategy 'nope'; valid choices: .*naive"):
        resolve_strategies("naive,nope")
    with pytest.raises(ConfigError, match="empty item"):
        resolve_strategies("naive,,wpl")


def test_config_yaml_layers_and_validation(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text("scenario: split\ntasks: 2\nshared: [1, 3]\nwpl: {alpha: 30}\ncommand: [wpl-nas, forgetting]\n")
    config = load_lab_config(path)
    assert (config.scenario, config.tasks, config.shared, config.sections["wpl"].alpha) == ("split", 2, "1,3", 30.0)
    assert config.strategy_options["wpl"].alpha == 30.0  # what create_strategy reads
    assert config.replace(wpl={"form": "gradient"}).sections["wpl"].alpha == 30.0
    assert LabConfig.from_dict(config.to_dict()) == config
    assert LabConfig().run_dir == Path("runs/two-model-mnist1d")
    bad = [({"trials": 3}, "unknown key 'trials'"), ({"epochs": "two"}, "must be of type int"),
           ({"wpl": {"alhpa": 1}}, "did you mean 'alpha'")]
    for data, message in bad:
        with pytest.raises(ConfigError, match=message):
            LabConfig.from_dict(data)
    invalid = [({"epochs": 0}, "epochs must be > 0"), ({"shared": "1,5"}, "valid choices: 1, 2, 3, 4"),
               ({"shared": "1,x"}, "comma-separated list of integers"), ({"a_fraction": "0"}, r"in \(0, 1\]"),
               ({"tasks": 1}, "tasks must be >= 2"), ({"wpl": {"form": "implicit"}}, "proximal, gradient"),
               ({"val_fraction": 1.0}, "val_fraction")]
    for data, message in invalid:
        with pytest.raises(ConfigError, match=message):
            LabConfig.from_dict(data).validate()


def test_scenario_options_and_data_checks(mnist1d):
    scenarios = {name: SCENARIOS.get(name)() for name in ("two-model", "sequence", "split", "permuted")}
    with pytest.raises(ConfigError, match=r"'tasks' \(--tasks\) does not apply to scenario 'two-model'.*split"):
        scenarios["two-model"].resolve(LabConfig(tasks=5), mnist1d)
    with pytest.raises(ConfigError, match=r"tasks=3 does not divide the 10 classes.*valid choices: 2, 5, 10"):
        scenarios["split"].resolve(LabConfig(scenario="split", tasks=3), mnist1d)
    with pytest.raises(ConfigError, match="space 'nb201' is for 2-D inputs"):
        scenarios["sequence"].resolve(LabConfig(scenario="sequence", space="nb201"), mnist1d)
    resolved = scenarios["permuted"].resolve(LabConfig(scenario="permuted"), mnist1d)
    assert (resolved.space, resolved.tasks, resolved.arch) == ("mnist1d", 5, None)
    assert scenarios["two-model"].resolve(LabConfig(), mnist1d).shared == "1,2,3"
    with pytest.raises(ConfigError, match="unknown scenario 'splt' \\(did you mean 'split'\\?\\)"):
        SCENARIOS.get("splt")
