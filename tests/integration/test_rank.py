"""`wpl-nas rank`: ranking fidelity against stand-alone training or a benchmark table."""

from __future__ import annotations

import csv
import json
import statistics
from collections import Counter

import optuna
import pytest
from click.testing import CliRunner

import wpl_nas
from wpl_nas.cli import cli
from wpl_nas.errors import ConfigError
from wpl_nas.evaluation import kendall_tau, spearman_rho
from wpl_nas.fidelity import _choose, rank_run


@pytest.fixture(scope="module")
def run_dir(tiny_space_file, data_dir, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    config = wpl_nas.SearchConfig(space=str(tiny_space_file), data_dir=str(data_dir), runs_dir=str(runs),
                                  study_name="tiny", trials=5, epochs=1, batch_size=256, device="cpu",
                                  eval_samples=200, sampler="random")
    return wpl_nas.run_search(config, progress=False, command=["test"]).run_dir


@pytest.fixture
def fresh_cache(run_dir):
    """The run folder without stand-alone scores (tests share the run)."""
    (run_dir / "rank" / "standalone.json").unlink(missing_ok=True)
    return run_dir


def distinct_archs(run_dir) -> dict[str, int]:
    """``{arch: its last complete trial}``."""
    study = wpl_nas.load_run(run_dir).study
    return {t.user_attrs["arch"]: t.number for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}


def truth_table(run_dir, path):
    """A benchmark table whose ground truth is the search's own score at training (τ = 1)."""
    study = wpl_nas.load_run(run_dir).study
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["index", "ArchitectureString", "accuracy"])
        for t in study.trials:
            writer.writerow([t.number, t.user_attrs["arch"], t.value])
    return path


def read_csv(run_dir) -> list[dict[str, str]]:
    with (run_dir / "rank" / "ranking.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_rank_against_standalone_training_resumes_from_its_cache(fresh_cache):
    run_dir = fresh_cache
    trained: list[str] = []
    result = rank_run(run_dir, archs=3, seeds=2, epochs=1, top_k=2, progress=False,
                      on_trained=lambda arch, score: trained.append(str(arch)))
    assert len(result.rows) == 3 and result.seeds == [0, 1]
    assert Counter(trained) == {r["arch"]: 2 for r in result.rows}  # each architecture once per seed
    for name in ("at_training", "final"):
        m = result.measures[name]
        assert -1.0 <= m["kendall_tau"] <= 1.0 and m["top_k"] in (0.0, 0.5, 1.0)
    assert (run_dir / "rank" / "ranking.md").read_text().count("`\\|") == 3  # pipes escaped in table cells
    cache = json.loads((run_dir / "rank" / "standalone.json").read_text())
    assert sorted((e["arch"], e["epochs"], e["seed"]) for e in cache["scores"]) == sorted(
        (r["arch"], 1, s) for r in result.rows for s in (0, 1))

    trained.clear()
    again = rank_run(run_dir, archs=3, seeds=2, epochs=1, top_k=2, progress=False,
                     on_trained=lambda arch, score: trained.append(str(arch)))
    assert trained == [] and again.rows == result.rows  # every stand-alone score came from the cache
    more = rank_run(run_dir, archs=3, seeds=3, epochs=1, progress=False,
                    on_trained=lambda arch, score: trained.append(str(arch)))
    assert sorted(trained) == sorted(r["arch"] for r in result.rows)  # only the third seed trained
    assert [r["truth_seeds"][:2] for r in more.rows] == [r["truth_seeds"] for r in result.rows]
    trained.clear()
    everything = rank_run(run_dir, seeds=2, epochs=1, progress=False,
                          on_trained=lambda arch, score: trained.append(str(arch)))
    new = set(distinct_archs(run_dir)) - {r["arch"] for r in result.rows}
    assert len(everything.rows) == 3 + len(new) and Counter(trained) == {arch: 2 for arch in new}
    trained.clear()
    rank_run(run_dir, archs=3, seeds=1, epochs=2, progress=False,
             on_trained=lambda arch, score: trained.append(str(arch)))
    assert len(trained) == 3  # another budget is another ground truth


@pytest.mark.slow
def test_multi_seed_truth_is_the_mean_and_the_ceiling_is_the_seeds_agreement(fresh_cache):
    run_dir = fresh_cache
    result = rank_run(run_dir, archs=4, seeds=2, epochs=1, progress=False)
    first, second = ([r["truth_seeds"][i] for r in result.rows] for i in (0, 1))
    assert first != second  # another seed: other initial weights and data order
    for r in result.rows:
        assert r["ground_truth"] == statistics.fmean(r["truth_seeds"])
    assert result.ceiling is not None
    assert result.ceiling["kendall_tau"] == pytest.approx(kendall_tau(first, second), nan_ok=True)
    assert result.ceiling["spearman_rho"] == pytest.approx(spearman_rho(first, second), nan_ok=True)

    rows = read_csv(run_dir)
    assert list(rows[0]) == ["trial", "arch", "at_training", "final", "ground_truth", "truth_seed_0", "truth_seed_1"]
    for row, r in zip(rows, result.rows, strict=True):
        assert row["arch"] == r["arch"] and float(row["ground_truth"]) == r["ground_truth"]
        assert [float(row["truth_seed_0"]), float(row["truth_seed_1"])] == r["truth_seeds"]
    text = (run_dir / "rank" / "ranking.md").read_text()
    assert "| supernet score | Kendall τ | τ noise ceiling | Spearman ρ | ρ noise ceiling |" in text
    tau = result.measures["at_training"]["kendall_tau"]
    assert f"| score at training | {tau:+.3f} | {result.ceiling['kendall_tau']:+.3f} |" in text
    assert "| seed 0 | seed 1 | stand-alone (1 epochs, mean of 2 seeds) |" in text

    one = rank_run(run_dir, archs=4, seeds=1, epochs=1, progress=False)  # the cache holds seed 0 already
    assert one.ceiling is None and [r["ground_truth"] for r in one.rows] == first
    assert list(read_csv(run_dir)[0])[-1] == "truth_seed_0"


def test_a_cache_from_an_older_wpl_nas_is_reused_and_a_damaged_one_refused(fresh_cache):
    run_dir = fresh_cache
    archs = distinct_archs(run_dir)
    legacy = {arch: {"score": 0.1 * i, "epochs": 1, "seed": 0} for i, arch in enumerate(archs)}
    (run_dir / "rank").mkdir(exist_ok=True)
    (run_dir / "rank" / "standalone.json").write_text(json.dumps(legacy))
    trained: list[str] = []
    result = rank_run(run_dir, seeds=1, epochs=1, progress=False, on_trained=lambda a, s: trained.append(str(a)))
    assert trained == [] and {r["arch"]: r["ground_truth"] for r in result.rows} == {
        arch: entry["score"] for arch, entry in legacy.items()}

    (run_dir / "rank" / "standalone.json").write_text('{"format": 2, "scores": [{"arch": "x"}]}')
    with pytest.raises(ConfigError, match=r"stand-alone cache .* is damaged"):
        rank_run(run_dir, seeds=1, epochs=1, progress=False)
    (run_dir / "rank" / "standalone.json").unlink()


def test_rank_against_a_benchmark_table(run_dir, tmp_path):
    table = truth_table(run_dir, tmp_path / "nb.csv")
    result = CliRunner().invoke(cli, ["rank", str(run_dir), "--ground-truth", str(table), "--archs", "4"])
    assert result.exit_code == 0, result.output
    # A table has no seeds, so no noise ceiling; the terminal gets plain text.
    lines = [line.split() for line in result.output.splitlines()]
    assert ["score", "at", "training", "+1.000", "+1.000", "1.00"] in lines
    assert "noise ceiling" not in result.output
    assert list(read_csv(run_dir)[0]) == ["trial", "arch", "at_training", "final", "ground_truth"]
    ranked = rank_run(run_dir, ground_truth=str(table), progress=False)
    assert ranked.ceiling is None and ranked.seeds == [] and all(r["truth_seeds"] == [] for r in ranked.rows)


def test_rank_prints_plain_text_and_writes_markdown(run_dir, tmp_path):
    table = truth_table(run_dir, tmp_path / "nb.csv")
    result = CliRunner().invoke(cli, ["rank", str(run_dir), "--ground-truth", str(table)])
    assert result.exit_code == 0, result.output
    assert "\\" not in result.output and "`" not in result.output and "|---" not in result.output
    rows = {line.split()[1]: line.split()[0] for line in result.output.splitlines()
            if line.split() and line.split()[0].isdigit()}  # trial, architecture, scores
    assert {arch: int(trial) for arch, trial in rows.items()} == distinct_archs(run_dir)  # raw strings, pipes and all
    markdown = (run_dir / "rank" / "ranking.md").read_text()
    assert markdown.count("`\\|") == len(rows) and "|---|" in markdown  # the file stays Markdown


def test_the_default_compares_every_distinct_complete_architecture(run_dir, tmp_path):
    table = truth_table(run_dir, tmp_path / "nb.csv")
    result = rank_run(run_dir, ground_truth=str(table), progress=False)
    assert {r["arch"]: r["trial"] for r in result.rows} == distinct_archs(run_dir)
    assert [r["trial"] for r in result.rows] == sorted(r["trial"] for r in result.rows)


def test_archs_n_is_a_subset_of_n_the_same_on_a_rerun(run_dir, tmp_path):
    table = truth_table(run_dir, tmp_path / "nb.csv")
    picks = []
    for _ in range(2):
        result = CliRunner().invoke(cli, ["rank", str(run_dir), "--ground-truth", str(table), "--archs", "3"])
        assert result.exit_code == 0, result.output
        picks.append([row["arch"] for row in read_csv(run_dir)])
    assert picks[0] == picks[1] and len(set(picks[0])) == 3 and set(picks[0]) <= set(distinct_archs(run_dir))


def synthetic_study(count: int) -> optuna.Study:
    """``count`` complete trials of distinct architectures, trial i scoring i / count, plus a repeat
    of architecture 0 as the last trial."""
    study = optuna.create_study(direction="maximize")
    for i in [*range(count), 0]:
        study.add_trial(optuna.trial.create_trial(value=i / count, params={}, distributions={},
                                                  user_attrs={"arch": f"width={i}", "score_at_training": i / count}))
    return study


def test_archs_n_is_a_uniform_random_subset_not_the_extremes():
    study = synthetic_study(40)
    chosen = _choose(study, 8, seed=0)
    assert chosen == _choose(study, 8, seed=0) and len(chosen) == 8
    assert chosen != _choose(study, 8, seed=1)
    assert [trial for trial, _, _ in chosen] == sorted(trial for trial, _, _ in chosen)
    everything = _choose(study, None, seed=0)
    assert len(everything) == 40 and everything[0][0] == 1  # a repeated architecture: its last trial (40)
    assert ("width=0" in {str(a) for _, a, _ in everything}) and everything[-1][0] == 40
    # Over many seeds every architecture is drawn about equally often: the extremes are not favoured.
    counts = Counter(str(arch) for seed in range(300) for _, arch, _ in _choose(study, 8, seed=seed))
    assert len(counts) == 40 and sum(counts.values()) == 300 * 8
    assert all(30 <= n <= 90 for n in counts.values()), counts  # expected 60 each
    best, worst = "width=39", "width=0"
    assert sum({best, worst} <= {str(a) for _, a, _ in _choose(study, 8, seed=s)} for s in range(300)) < 30


@pytest.mark.slow
@pytest.mark.parametrize(("args", "message"), [
    (["--ground-truth", "{table}", "--column", "top1"], "has no column 'top1'; its columns: ArchitectureString, acc"),
    (["--ground-truth", "{missing}"], "cannot read ground-truth table"),
    (["--archs", "1"], "1 is not in the range x>=2"),
    (["--seeds", "0"], "0 is not in the range x>=1"),
])
def test_bad_input_is_refused_with_exit_code_2(run_dir, tmp_path, args, message):
    table = tmp_path / "t.csv"
    table.write_text("ArchitectureString,acc\n")
    args = [a.format(table=table, missing=tmp_path / "nope.csv") for a in args]
    result = CliRunner().invoke(cli, ["rank", str(run_dir), *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_bad_seeds_are_refused_by_the_api(run_dir):
    with pytest.raises(ConfigError, match="seeds must be >= 1, but got seeds=0"):
        rank_run(run_dir, seeds=0)


def test_not_a_run_folder(tmp_path):
    result = CliRunner().invoke(cli, ["rank", str(tmp_path)])
    assert result.exit_code == 2 and "is not a wpl-nas run folder" in result.output
