"""`wpl-nas rank`: ranking fidelity against stand-alone training or a benchmark table."""

from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner

import wpl_nas
from wpl_nas.cli import cli
from wpl_nas.fidelity import rank_run


@pytest.fixture(scope="module")
def run_dir(tiny_space_file, data_dir, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    config = wpl_nas.SearchConfig(space=str(tiny_space_file), data_dir=str(data_dir), runs_dir=str(runs),
                                  study_name="tiny", trials=5, epochs=1, batch_size=256, device="cpu",
                                  eval_samples=200, sampler="random")
    return wpl_nas.run_search(config, progress=False, command=["test"]).run_dir


@pytest.mark.slow
def test_rank_against_standalone_training_resumes_from_its_cache(run_dir):
    trained: list[str] = []
    result = rank_run(run_dir, archs=3, epochs=1, top_k=2, progress=False,
                      on_trained=lambda arch, score: trained.append(str(arch)))
    assert len(result.rows) == 3 and len(trained) == 3
    assert {r["arch"] for r in result.rows} == set(trained)
    for name in ("at_training", "final"):
        m = result.measures[name]
        assert -1.0 <= m["kendall_tau"] <= 1.0 and m["top_k"] in (0.0, 0.5, 1.0)
    assert (run_dir / "rank" / "ranking.md").read_text().count("`\\|") == 3  # pipes escaped in table cells
    assert (run_dir / "rank" / "standalone.json").is_file()

    trained.clear()
    again = rank_run(run_dir, archs=3, epochs=1, top_k=2, progress=False,
                     on_trained=lambda arch, score: trained.append(str(arch)))
    assert trained == [] and again.rows == result.rows  # every stand-alone score came from the cache
    rank_run(run_dir, archs=3, epochs=2, progress=False, on_trained=lambda arch, score: trained.append(str(arch)))
    assert len(trained) == 3  # another budget is another ground truth


@pytest.mark.slow
def test_rank_against_a_benchmark_table(run_dir, tmp_path):
    study = wpl_nas.load_run(run_dir).study
    table = tmp_path / "nb.csv"
    with table.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["index", "ArchitectureString", "accuracy"])
        for t in study.trials:  # the ground truth is the search's own score at training: τ = 1
            writer.writerow([t.number, t.user_attrs["arch"], t.value])
    result = CliRunner().invoke(cli, ["rank", str(run_dir), "--ground-truth", str(table), "--archs", "4"])
    assert result.exit_code == 0, result.output
    assert "| score at training | +1.000 | +1.000 | 1.00 |" in result.output


@pytest.mark.slow
@pytest.mark.parametrize(("args", "message"), [
    (["--ground-truth", "{table}", "--column", "top1"], "has no column 'top1'; its columns: ArchitectureString, acc"),
    (["--ground-truth", "{missing}"], "cannot read ground-truth table"),
    (["--archs", "1"], "1 is not in the range x>=2"),
])
def test_bad_input_is_refused_with_exit_code_2(run_dir, tmp_path, args, message):
    table = tmp_path / "t.csv"
    table.write_text("ArchitectureString,acc\n")
    args = [a.format(table=table, missing=tmp_path / "nope.csv") for a in args]
    result = CliRunner().invoke(cli, ["rank", str(run_dir), *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_not_a_run_folder(tmp_path):
    result = CliRunner().invoke(cli, ["rank", str(tmp_path)])
    assert result.exit_code == 2 and "is not a wpl-nas run folder" in result.output
