"""The forgetting lab: scenarios, measures, seeds, and what a run writes (real training, tiny data)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import wpl_nas
from wpl_nas.errors import ConfigError
from wpl_nas.lab import METRICS, SCENARIOS, LabConfig, LabResult, SeedOutcome, forgetting_metrics, run_lab
from wpl_nas.lab.config import load_lab_config
from wpl_nas.lab.metrics import aggregate
from wpl_nas.lab.runner import resolve_strategies
from wpl_nas.lab.scenarios import chain_space, default_arch, model_a, model_b
from wpl_nas.strategies import STRATEGIES


def lab(tmp_path: Path, data_dir: Path, **kw) -> LabResult:
    options = {"device": "cpu", "data_dir": str(data_dir), "runs_dir": str(tmp_path / "runs"), "epochs": 1,
               "train_samples": 512, "eval_samples": 200, **kw}
    return run_lab(LabConfig(**options), progress=False, command=["test"])


def check_row_consistency(result: LabResult) -> None:
    """Every per-seed measure follows from its retention matrix; rows are the means over seeds."""
    for o in result.outcomes:
        m = o.metrics
        count = len(o.matrix)
        assert [len(row) for row in o.matrix] == list(range(1, count + 1))  # lower triangle, K rows
        ref = [o.matrix[k][k] for k in range(count - 1)]
        final = [o.matrix[-1][k] for k in range(count - 1)]
        forgetting = [r - f for r, f in zip(ref, final, strict=True)]
        assert m["forgetting_mean"] == pytest.approx(sum(forgetting) / len(forgetting))
        assert m["forgetting_max"] == pytest.approx(max(forgetting))
        assert m["first_before"] - m["first_after"] == pytest.approx(m["forgetting_mean"])
        ratios = [(f - o.chance[k]) / (r - o.chance[k]) - 1 for k, (r, f) in enumerate(zip(ref, final, strict=True))
                  if r > o.chance[k]]
        if ratios:
            assert m["rho"] == pytest.approx(sum(ratios) / len(ratios))
        else:  # no earlier model beat chance: the ratio is undefined
            assert math.isnan(m["rho"])
        assert m["last_acc"] == o.matrix[-1][-1]
        assert o.curve_acc[0] == o.matrix[0][0] and o.curve_acc[-1] == o.matrix[-1][0]
        assert m["first_min"] == min(o.curve_acc) <= m["first_before"]
        assert m["ms_per_step"] > 0 and o.train_steps > 0
        assert sorted(o.curve_steps) == o.curve_steps and o.curve_steps[0] == 0
    for row in result.rows:
        group = [o for o in result.outcomes if o.strategy == row.strategy and o.variant == row.variant]
        assert row.seeds == len(group)
        for name in METRICS:
            values = [o.metrics[name] for o in group if not math.isnan(o.metrics[name])]
            if values:
                assert row.mean[name] == pytest.approx(sum(values) / len(values))


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


@pytest.fixture(scope="module")
def two_model(tmp_path_factory, data_dir, mnist1d) -> LabResult:
    """Naive and WPL on the two-model experiment, 2 seeds; B shares 3 of A's layers."""
    return lab(tmp_path_factory.mktemp("lab"), data_dir, scenario="two-model", strategies="naive,wpl", channels=16,
               train_samples=1280, epochs=2, shared="3", eval_samples=300, probe_every=4, seeds=2, name="tm")


def test_two_model_naive_forgets_and_wpl_forgets_less(two_model):
    by_seed = {(o.strategy, o.seed): o.metrics for o in two_model.outcomes}
    for seed in (0, 1):
        naive, wpl = by_seed["naive", seed], by_seed["wpl", seed]
        assert naive["first_before"] == wpl["first_before"]  # same A: same weights, data and batches
        # A's accuracy falls while B trains without protection ...
        assert naive["first_min"] < naive["first_before"] - 0.02, naive
        # ... and falls less, and ends higher, with WPL.
        assert naive["first_before"] - naive["first_min"] > wpl["first_before"] - wpl["first_min"] + 0.02, (naive,
                                                                                                          wpl)
        assert wpl["forgetting_mean"] < naive["forgetting_mean"], (naive, wpl)
    assert two_model.row("wpl", "shared3").mean["strategy_bytes"] > 0 == two_model.row("naive", "shared3").mean[
        "strategy_bytes"]


def test_two_model_rows_measures_and_seeds(two_model):
    check_row_consistency(two_model)
    assert [(r.strategy, r.variant, r.params) for r in two_model.rows] == [
        ("naive", "shared3", {"shared": 3, "a_fraction": 1.0}), ("wpl", "shared3", {"shared": 3, "a_fraction": 1.0})]
    for row in two_model.rows:
        assert row.seeds == 2
        group = [o.metrics["forgetting_mean"] for o in two_model.outcomes if o.strategy == row.strategy]
        mean = sum(group) / 2
        assert row.std["forgetting_mean"] == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in group)))  # ddof 1
    for o in two_model.outcomes:
        assert o.labels == ["A", "B"] and o.chance == [0.1, 0.1]
        assert o.curve_steps == [0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40]  # probes every 4 of B's 40 steps
    assert " ± " in two_model.table and "| A before | A after | A lowest |" in two_model.table


def test_two_model_writes_csv_markdown_json_png_and_tensorboard(two_model):
    run_dir = two_model.run_dir
    rows = list(csv.DictReader((run_dir / "results.csv").read_text().splitlines()))
    assert [r["strategy"] for r in rows] == ["naive", "wpl"]
    assert set(METRICS) | {f"{m}_std" for m in METRICS} | {"scenario", "strategy", "shared", "a_fraction",
                                                                          "seeds"} == set(rows[0])
    assert float(rows[1]["forgetting_mean"]) == pytest.approx(two_model.rows[1].mean["forgetting_mean"])
    assert len(list(csv.DictReader((run_dir / "seeds.csv").read_text().splitlines()))) == 4
    assert two_model.table in (run_dir / "results.md").read_text()
    assert (run_dir / "retention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = load_lab_config(run_dir / "config.yaml")  # reruns with --config
    assert saved == two_model.config and saved.shared == "3" and saved.a_fraction == "1"

    outcome = next(o for o in two_model.outcomes if o.strategy == "wpl" and o.seed == 1)
    data = json.loads((run_dir / "retention" / "wpl" / "shared3" / "seed1.json").read_text())
    assert data["matrix"] == outcome.matrix and data["curve"]["accuracy"] == outcome.curve_acc
    events = EventAccumulator(str(run_dir / "tb" / "wpl" / "shared3" / "seed1"))
    events.Reload()
    curve = events.Scalars("retained/first_acc")
    assert [e.step for e in curve] == outcome.curve_steps
    assert [e.value for e in curve] == pytest.approx(outcome.curve_acc)
    assert events.Scalars("final/forgetting_mean")[0].value == pytest.approx(outcome.metrics["forgetting_mean"])
    assert [e.step for e in events.Scalars("accuracy/model_00")] == [0, 1]


def test_under_trained_a_and_several_depths(tmp_path, data_dir, mnist1d):
    result = lab(tmp_path, data_dir, strategies="naive", channels=8, shared="1,2", a_fraction="1,0.25",
                 train_samples=256)
    assert [r.variant for r in result.rows] == ["shared1", "shared1-a0.25", "shared2", "shared2-a0.25"]
    full, weak = result.outcomes[0], result.outcomes[1]
    assert weak.params == {"shared": 1, "a_fraction": 0.25}
    # A trains on a quarter of the data: a quarter of the steps (256 samples, batch 64: 4 steps -> 1).
    assert full.train_steps - weak.train_steps == 3
    check_row_consistency(result)


# --- sequence, split, permuted ------------------------------------------------------------------
def test_sequence_records_the_full_retention_matrix(tmp_path, data_dir, mnist1d, tiny_space_file):
    result = lab(tmp_path, data_dir, scenario="sequence", space=str(tiny_space_file), candidates=4,
                 strategies="naive,wpl")
    assert [r.strategy for r in result.rows] == ["naive", "wpl"]
    for o in result.outcomes:
        assert len(o.matrix) == 4 and len(set(o.archs)) == 4  # distinct candidates
        assert o.labels == [f"candidate {k}" for k in range(4)]
        data = json.loads((result.run_dir / "retention" / o.strategy / "seed0.json").read_text())
        assert data["matrix"] == o.matrix
    naive, wpl = result.outcomes
    assert naive.archs == wpl.archs  # the seed fixes the candidates, whatever the strategy
    check_row_consistency(result)
    assert "earlier candidates before" in result.table and "candidate 0 lowest" in result.table
    again = SCENARIOS.get("sequence")().plans(result.config, wpl_nas.load_dataset("mnist1d", data_dir=data_dir), 1)
    assert [str(m.arch) for m in again[0].models] != naive.archs  # another seed, other candidates


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


def test_split_runs_on_a_multi_head_supernet(tmp_path, data_dir, mnist1d, tiny_space_file):
    result = lab(tmp_path, data_dir, scenario="split", space=str(tiny_space_file), tasks=2, strategies="naive,wpl",
                 train_samples=600)
    for o in result.outcomes:
        assert len(o.matrix) == 2 and o.archs[1].endswith("@head1") and o.chance == [0.2, 0.2]
    check_row_consistency(result)


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
    scenarios = {name: SCENARIOS.get(name)() for name in SCENARIOS.names()}
    assert list(scenarios) == ["two-model", "sequence", "split", "permuted"]
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
