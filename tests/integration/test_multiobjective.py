"""Multi-objective search: --objectives accuracy,params,flops,latency, NSGA-II by default, the Pareto front."""

from __future__ import annotations

import optuna
import pytest
from click.testing import CliRunner

import wpl_nas
from wpl_nas.cli import cli
from wpl_nas.evaluation.cost import count_flops, measure_latency
from wpl_nas.export import export_run


@pytest.fixture
def base_args(tiny_space_file, data_dir, tmp_path) -> list[str]:
    return ["search", "--no-progress", "--space", str(tiny_space_file), "--data-dir", str(data_dir),
            "--runs-dir", str(tmp_path / "runs"), "--epochs", "1", "--batch-size", "256", "--device", "cpu",
            "--eval-samples", "200", "--study-name", "mo"]


@pytest.mark.slow
def test_multi_objective_search_reports_the_pareto_front(base_args, tmp_path):
    result = CliRunner().invoke(cli, [*base_args, "--trials", "4", "--objectives", "accuracy,params,flops,latency"])
    assert result.exit_code == 0, result.output
    assert "Pareto front" in result.output and "accuracy" in result.output
    run = wpl_nas.load_run(tmp_path / "runs" / "mo")
    assert run.config.resolved_sampler == "nsga2"
    study = run.study
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE] + [optuna.study.StudyDirection.MINIMIZE] * 3
    assert study.metric_names == ["accuracy", "params", "flops", "latency"]
    for t in study.trials:
        accuracy, params, flops, latency = t.values
        assert accuracy == t.user_attrs["score_at_training"] and params == t.user_attrs["params"]
        assert flops == t.user_attrs["flops"] > 0 and latency == t.user_attrs["latency_ms"] > 0
    assert study.best_trials and set(study.user_attrs["pool"]) <= {t.number for t in study.trials}
    best = max(study.trials, key=lambda t: t.values[0])
    assert export_run(run.run_dir).trial == best.number  # the best accuracy, whatever its costs


@pytest.mark.parametrize(("objectives", "extra"), [
    ("params", []), ("accuracy,accuracy", []), ("accuracy,bogus", []), ("accuracy,params", ["--pruner", "median"]),
])
def test_bad_objectives_are_refused(base_args, tmp_path, objectives, extra):
    result = CliRunner().invoke(cli, [*base_args, "--objectives", objectives, *extra])
    assert result.exit_code == 2, result.output
    assert "objectives" in result.output
    assert not (tmp_path / "runs").exists()


def test_flops_and_latency_order_candidates(tiny_space, mnist1d):
    net = wpl_nas.build_supernet(tiny_space, mnist1d)
    convs = tiny_space.parse("|conv_5~0|+|conv_5~0|conv_5~1|+|conv_5~0|conv_5~1|conv_5~2|")
    skips = tiny_space.parse("|skip_connect~0|+|skip_connect~0|none~1|+|skip_connect~0|none~1|skip_connect~2|")
    shape = mnist1d.input_shape
    assert count_flops(net, convs, shape) > count_flops(net, skips, shape) > 0  # the skeleton costs too
    assert measure_latency(net, convs, shape, device=next(net.parameters()).device) > 0


@pytest.mark.slow
def test_a_run_saved_with_sampler_tpe_resumes_under_auto(base_args, tmp_path):
    first = CliRunner().invoke(cli, [*base_args, "--trials", "1", "--sampler", "tpe"])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(cli, [*base_args, "--trials", "2"])  # sampler: auto, i.e. tpe for one objective
    assert again.exit_code == 0, again.output
