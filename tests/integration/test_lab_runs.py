"""The forgetting lab run whole: what each scenario measures and writes (real training, tiny data)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import wpl_nas
from wpl_nas.lab import METRICS, SCENARIOS, LabConfig, LabResult, run_lab
from wpl_nas.lab.config import load_lab_config


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


def test_split_runs_on_a_multi_head_supernet(tmp_path, data_dir, mnist1d, tiny_space_file):
    result = lab(tmp_path, data_dir, scenario="split", space=str(tiny_space_file), tasks=2, strategies="naive,wpl",
                 train_samples=600)
    for o in result.outcomes:
        assert len(o.matrix) == 2 and o.archs[1].endswith("@head1") and o.chance == [0.2, 0.2]
    check_row_consistency(result)
