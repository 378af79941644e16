"""The benchmark scripts run and report every figure they promise.

Their timings are read by people, never asserted: a timing threshold fails on a busy machine and
passes on a fast one whatever the code does. What is asserted is the structure of the report.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str, json_out: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(ROOT / "benchmarks" / script), "--quick", *args, "--json", str(json_out)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


def _registered() -> list[str]:
    """The strategies a fresh ``import wpl_nas`` registers: what the benchmark sees (this process may
    have imported more strategy modules through other tests)."""
    out = subprocess.run([sys.executable, "-c", "import json, wpl_nas; print(json.dumps(wpl_nas.STRATEGIES.names()))"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, check=True)
    return json.loads(out.stdout)


@pytest.mark.slow
def test_bench_step_quick_reports_supernet_vs_standalone(tmp_path):
    out = tmp_path / "step.json"
    proc = _run("bench_step.py", "--threads", "1", json_out=out)
    figures = json.loads(out.read_text())
    rows = figures["results"]
    assert rows and {r["comparison"] for r in rows} == {"supernet/standalone"}
    assert all(_positive(r["ratio"]) and _positive(r["baseline_ms"]) for r in rows)
    assert "| supernet/standalone |" in proc.stdout


@pytest.mark.slow
def test_bench_precision_quick_times_fp32_and_bf16_side_by_side(tmp_path):
    out = tmp_path / "precision.json"
    proc = _run("bench_precision.py", json_out=out)
    rows = json.loads(out.read_text())["results"]
    assert [r["variant"] for r in rows] == ["fp32", "bf16"]
    assert all(_positive(r["ratio"]) and _positive(r["variant_ms"]) and math.isfinite(r["loss"]) for r in rows)
    assert "| bf16 |" in proc.stdout


@pytest.mark.slow
def test_bench_data_quick_times_memory_and_streamed_paths_side_by_side(tmp_path):
    out = tmp_path / "data.json"
    proc = _run("bench_data.py", json_out=out)
    report = json.loads(out.read_text())
    rows = report["results"]
    assert [r["variant"] for r in rows] == ["memory-float32", "memory-uint8", "stream-w0", "stream-w2"]
    assert all(_positive(r["ratio"]) and _positive(r["variant_ms"]) for r in rows)
    # Every path reads the same normalised images in the same order: the same training.
    assert len({r["loss"] for r in rows}) == 1
    memory = report["memory"]
    assert memory["float32_bytes"] == 4 * memory["uint8_bytes"] > 0
    assert "| stream-w2 |" in proc.stdout
    # The folder loaded with its statistics measured and given back, side by side.
    load = report["load"]
    assert (load["baseline"], load["variant"]) == ("load-measured", "load-recorded") and _positive(load["ratio"])
    assert "statistics recorded by the run" in proc.stdout


@pytest.mark.slow
def test_bench_strategies_quick_reports_every_registered_strategy(tmp_path):
    out = tmp_path / "strategies.json"
    proc = _run("bench_strategies.py", json_out=out)
    figures = json.loads(out.read_text())
    names = _registered()
    assert figures["environment"]["strategies"] == names
    assert "naive" in names

    # 1. Step overhead: a row per strategy (per form, plus autograd, for the quadratic family).
    step = figures["step"]
    assert not step["failures"]
    rows = step["rows"]
    assert {r["strategy"] for r in rows} == set(names) - {"naive"}
    assert all(_positive(r["ratio"]) and _positive(r["baseline_ms"]) and _positive(r["variant_ms"]) for r in rows)
    assert all(r["finite_after_run"] for r in rows)
    quadratic = {r["strategy"] for r in rows if r["form"] is not None}
    assert {"wpl", "ewc", "si"} <= quadratic
    for name in quadratic:
        assert {r["form"] for r in rows if r["strategy"] == name} == {"proximal", "gradient", "autograd"}
        assert all(r["live"] for r in rows if r["strategy"] == name), f"{name}'s penalty is not live"
    versus = step["versus_autograd"]
    assert {(r["strategy"], r["form"]) for r in versus} == {(q, f) for q in quadratic for f in ("proximal", "gradient")}
    assert all(_positive(r["ratio"]) for r in versus)

    # 2. Importance: vmap and loop Fishers agree.
    importance = figures["importance"]
    assert importance and all(_positive(r["ratio"]) and r["agree"] for r in importance)

    # 3. Memory: a row per strategy; tensors held do not change with the number of candidates
    # (HAT's protected set may grow up to its capacity).
    memory = {r["strategy"]: r for r in figures["memory"]}
    assert set(memory) == set(names)
    for name, r in memory.items():
        assert "error" not in r, f"{name}: {r.get('error')}"
        assert _positive(r["ratio"])
        first, last = (r["bytes"][str(c)] for c in (r["counts"][0], r["counts"][-1]))
        if name != "hat":
            assert (last["state"], last["held"]) == (first["state"], first["held"]), name
            assert r["verdict"] != "grows", name

    for heading in ("### Step overhead", "### Importance estimation", "### Memory"):
        assert heading in proc.stdout
    for name in names:
        assert f"| {name} |" in proc.stdout


@pytest.mark.slow
def test_bench_quality_quick_pairs_each_strategy_with_naive(tmp_path):
    out = tmp_path / "quality.json"
    proc = _run("bench_quality.py", "--runs-dir", str(tmp_path / "runs"), json_out=out)
    figures = json.loads(out.read_text())
    rows = {r["strategy"]: r for r in figures["rows"]}
    assert set(rows) == {"naive", "wpl"}
    for row in rows.values():
        assert row["seeds"] == 1
        assert 0.0 <= row["a_lowest"]["mean"] <= row["a_before"]["mean"] <= 1.0
    # B's cost is measured against naive's B of the same seed, so naive's own is exactly zero.
    assert rows["naive"]["b_points"]["mean"] == 0.0
    assert math.isclose(rows["wpl"]["b_points"]["mean"],
                        100.0 * (rows["wpl"]["b_final"]["mean"] - rows["naive"]["b_final"]["mean"]))
    assert "| 3 | wpl |" in proc.stdout
    assert (tmp_path / "runs" / "bench-quality" / "results.md").is_file()


@pytest.mark.slow
def test_bench_sampler_quick_compares_both_samplers(tmp_path):
    out = tmp_path / "sampler.json"
    proc = _run("bench_sampler.py", json_out=out)
    rows = json.loads(out.read_text())["rows"]
    assert [r["sampler"] for r in rows] == ["tpe", "forgetting-aware"]
    for r in rows:
        assert 0.0 <= r["best_standalone"] <= 1.0 and 0.0 <= r["retained_mean"] <= 1.0
        assert r["distinct"] >= 1 and r["mean_params"] > 0
    assert "| forgetting-aware |" in proc.stdout


@pytest.mark.slow
def test_bench_language_quick_reports_naive_and_wpl_per_seed(tmp_path):
    out = tmp_path / "language.json"
    proc = _run("bench_language.py", json_out=out)
    rows = json.loads(out.read_text())["results"]
    assert [(r["seed"], r["strategy"]) for r in rows] == [(0, "naive"), (0, "wpl")]
    assert all(r["best"] > 1.0 and math.isfinite(r["forgetting_mean"]) for r in rows)
    assert "| 0 | wpl |" in proc.stdout


@pytest.mark.slow
def test_bench_kill_quick_kills_resumes_and_loses_nothing(tmp_path):
    """SIGKILLs of a real search at seeded random moments (up to three: on a fast machine the search may
    finish first): nothing completed is lost, no file is corrupt, and the resumed run equals the
    uninterrupted one (what the campaign exists to show)."""
    out = tmp_path / "kill.json"
    proc = _run("bench_kill.py", json_out=out)
    report = json.loads(out.read_text())
    assert 1 <= report["kills"] <= 3 and report["runs"] == report["kills"] + 1
    assert (report["lost"], report["corrupt"], report["differs"]) == (0, 0, 0), report
    assert "lost completed trials" in proc.stdout and "resumed ≠ uninterrupted" in proc.stdout


@pytest.mark.slow
def test_bench_threads_quick_times_every_setting_quiet_and_beside_a_hog(tmp_path):
    """One round of each thread setting, quiet and beside a CPU hog; every row has its ratio to the
    best setting of its condition, and the default runs on one thread."""
    out = tmp_path / "threads.json"
    proc = _run("bench_threads.py", json_out=out)
    figures = json.loads(out.read_text())
    rows = figures["rows"]
    assert {(r["condition"], r["setting"]) for r in rows} == {
        (c, s) for c in ("quiet", "hog") for s in ("default", "1", "N", "N-spin")}
    assert all(_positive(r["wall_s"]) and _positive(r["cpu_s"]) and r["ratio_to_best"] >= 1.0 for r in rows)
    for condition in ("quiet", "hog"):
        assert [r["ratio_to_best"] for r in rows if r["condition"] == condition and r["best"]] == [1.0]
    threads = {r["setting"]: r["threads"] for r in rows}
    cores = figures["environment"]["cores"]
    assert threads["default"] == threads["1"] == 1 and threads["N"] == threads["N-spin"] == cores
    assert len(figures["runs"]) == 8 and "| beside 1 CPU hog | default |" in proc.stdout


def test_bench_startup_quick_times_each_command_against_import_click(tmp_path):
    """Two rounds of every fast command; each row has its ratio to ``import click`` and the heavy
    modules it imported: none, for the commands that answer without torch."""
    out = tmp_path / "startup.json"
    proc = _run("bench_startup.py", json_out=out)
    rows = {r["command"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["import click", "wpl-nas --help", "wpl-nas search --help", "wpl-nas search --trials abc",
                          "import wpl_nas"]
    assert all(r["runs"] == 2 and _positive(r["median_s"]) and _positive(r["ratio"]) for r in rows.values())
    assert rows["import click"]["ratio"] == 1.0 and rows["wpl-nas search --trials abc"]["exit_codes"] == [2]
    assert all(r["heavy"] == [] for r in rows.values()), rows
    assert "| `wpl-nas --help` |" in proc.stdout


@pytest.mark.slow
def test_bench_fidelity_quick_pairs_arms_and_reports_ceiling_and_intervals(tmp_path):
    out, work = tmp_path / "fidelity.json", tmp_path / "work"
    proc = _run("bench_fidelity.py", "--work-dir", str(work), json_out=out)
    figures = json.loads(out.read_text())
    settings = figures["settings"]
    assert settings["arms"] == ["naive", "wpl"] and settings["search_seeds"] == [0, 1]
    assert figures["pairing"]["verified"] is True
    assert figures["command"].startswith("python benchmarks/bench_fidelity.py --quick")
    for arm in settings["arms"]:
        for seed in settings["search_seeds"]:
            run = figures["per_run"][f"{arm}/{seed}"]
            assert run["candidates"] >= 2
            for key in ("tau_final", "tau_training", "ceiling_kendall_tau"):
                assert math.isnan(run[key]) or -1.0 <= run[key] <= 1.0, key
            assert 0.0 <= run["chosen_final_truth"] <= run["best_truth"] <= 1.0
            assert run["regret_final"] >= 0.0 and run["regret_training"] >= 0.0
    # Every stand-alone score: one per truth seed for each candidate of each search seed.
    for seed in settings["search_seeds"]:
        scores = figures["truth_scores"][str(seed)]
        assert len(scores) == figures["per_run"][f"naive/{seed}"]["candidates"]
        assert all(len(s) == 2 for s in scores.values())
    differences = figures["bootstrap"]["differences"]
    assert set(differences) == {"wpl"}
    for measure in ("tau_final", "tau_training", "chosen_final_truth", "chosen_training_truth"):
        d = differences["wpl"][measure]
        assert len(d["per_seed"]) == 2 and d["replicates"] > 900
        low, high = d["ci_candidates"]
        assert low <= high
    # The baseline against itself would be zero: the differences are paired per seed.
    naive = figures["bootstrap"]["values"]["naive"]["tau_final"]["per_seed"]
    wpl = figures["bootstrap"]["values"]["wpl"]["tau_final"]["per_seed"]
    paired = [w - n for w, n in zip(wpl, naive, strict=True)]
    assert paired == pytest.approx(differences["wpl"]["tau_final"]["per_seed"], nan_ok=True)
    for text in ("Pairing verified", "τ ceiling", "95% CI, candidates", "| wpl | τ(final, truth) |"):
        assert text in proc.stdout
    assert figures["markdown"] in proc.stdout

    # A rerun reuses the searches and the cached ground truth.
    _run("bench_fidelity.py", "--work-dir", str(work), json_out=out)
    again = json.loads(out.read_text())
    assert again["truth"]["trained"] == 0 and all(r["reused"] for r in again["runs"].values())
    assert json.dumps(again["per_run"], sort_keys=True) == json.dumps(figures["per_run"], sort_keys=True)


def test_bench_fidelity_refuses_an_unknown_arm_option(tmp_path):
    arm = 'bad={"strategy": "wpl", "wpl": {"no_such_option": 1}}'
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_fidelity.py"), "--quick", "--work-dir",
                           str(tmp_path), "--arms", "naive", "--arm", arm],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no_such_option" in proc.stderr and "bad" in proc.stderr
    assert not (tmp_path / "runs").exists()  # refused before any search


def test_bench_fidelity_stops_when_the_arms_are_not_paired(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_fidelity", ROOT / "benchmarks" / "bench_fidelity.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # its dataclasses look their module up
    monkeypatch.setattr(sys, "path", list(sys.path))  # it puts benchmarks/ on the path
    spec.loader.exec_module(bench)

    def run(*ops: str) -> dict:
        proposals = [{"number": i, "state": "COMPLETE", "params": {"0->1": op}} for i, op in enumerate(ops)]
        return {"proposals": proposals, "rows": [{"arch": op} for op in set(ops)]}

    paired = {("naive", 0): run("conv", "skip"), ("wpl", 0): run("conv", "skip")}
    assert bench.verify_pairing(paired, ["naive", "wpl"], [0], "naive")["verified"]
    unpaired = {("naive", 0): run("conv", "skip"), ("wpl", 0): run("skip", "conv")}
    with pytest.raises(SystemExit, match="pairing broken: seed 0, trial 0"):
        bench.verify_pairing(unpaired, ["naive", "wpl"], [0], "naive")


@pytest.mark.slow
def test_bench_bookkeeping_quick_times_every_part_at_each_size(tmp_path):
    out = tmp_path / "bookkeeping.json"
    proc = _run("bench_bookkeeping.py", json_out=out)
    assert "ratio N = 20 : N = 5" in proc.stdout
    figures = json.loads(out.read_text())
    assert set(figures["sizes"]) == {"5", "20"}
    assert all(set(row) == {"retention", "anatomy", "tensorboard", "checkpoint", "total"}
               for row in figures["sizes"].values())


@pytest.mark.slow
def test_bench_distributed_quick_compares_two_processes_with_one(tmp_path):
    out = tmp_path / "distributed.json"
    proc = _run("bench_distributed.py", json_out=out)
    figures = json.loads(out.read_text())
    rows = {r["setting"]: r for r in figures["results"]}
    assert set(rows) == {"1x2", "1x1", "2x1"}
    assert all(_positive(r["seconds"]) and _positive(r["ratio_to_1x2"]) for r in rows.values())
    assert rows["1x1"]["max_weight_diff"] == 0.0 and rows["2x1"]["same_candidates"] is True
    assert all(math.isfinite(v) and v >= 0 for v in figures["undivided"].values())
    assert set(figures["rank0"]) == {"this"}  # rank 0 of 2x1, by kind of work; no --baseline given
    assert set(figures["rank0"]["this"]) == set(figures["undivided"])
    assert _positive(figures["rank0"]["this"]["train_epochs"]) and _positive(figures["undivided"]["epoch_scores"])
    assert "| 2x1 |" in proc.stdout and "| consolidation |" in proc.stdout
    assert "| scores after each epoch |" in proc.stdout and "rank 0 of 2x1" in proc.stdout


@pytest.mark.slow
def test_bench_overhead_quick_splits_each_search_into_its_parts_and_times_the_bookkeeping(tmp_path):
    """Each variant's search is split into parts that add up to its whole process, training steps
    included, with the ratio total / training steps; the two variants end with the same final.csv (the
    lean one only draws and measures less often); the bookkeeping has its row per size."""
    out = tmp_path / "overhead.json"
    proc = _run("bench_overhead.py", json_out=out)
    figures = json.loads(out.read_text())
    assert set(figures["search"]) == {"default", "lean"}
    for row in figures["search"].values():
        cpu = row["cpu"]
        assert _positive(cpu["training steps"]) and _positive(cpu["pool re-scoring"]) and _positive(cpu["total"])
        assert sum(v for k, v in cpu.items() if k != "total") == pytest.approx(cpu["total"], rel=1e-6)
        assert row["ratio_cpu"] == pytest.approx(cpu["total"] / cpu["training steps"]) and row["ratio_cpu"] > 1
    assert set(figures["bookkeeping"]) == {"5", "20"}
    assert "| default | " in proc.stdout and "ratio N = 20 : N = 5" in proc.stdout
    assert "same final.csv in every search: yes" in proc.stdout


@pytest.mark.slow
def test_bench_compile_quick_reports_compile_time_and_break_even(tmp_path):
    out = tmp_path / "compile.json"
    proc = _run("bench_compile.py", "--spaces", "mnist1d", json_out=out)
    rows = json.loads(out.read_text())["results"]
    assert [r["space"] for r in rows] == ["mnist1d"]
    for r in rows:
        assert _positive(r["compile_overhead_s"]) and _positive(r["ratio"]) and r["break_even_steps"] > 0
        assert r["first_loss_difference"] < 1e-3  # the same step from the same weights, to rounding
    assert "| mnist1d |" in proc.stdout and "break-even" in proc.stdout


@pytest.mark.slow
def test_gpu_check_smoke_runs_the_search_part_on_a_cpu_and_writes_its_json(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--device", "cpu",
               "--parts", "search", "--out", str(tmp_path)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["environment"]["device"] == "cpu" and list(report["parts"]) == ["search"]
    search = report["parts"]["search"]
    assert search["status"] == "ok", search["tail"]
    figures = search["results"]
    assert figures["finished"] and figures["trials"] == 3 and 0 < figures["training_share"] < 1
    assert "## gpu_check summary" in proc.stdout and "3 candidates x 2 steps" in proc.stdout


def test_gpu_check_refuses_an_unknown_part(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--parts", "tests,warp", "--out",
               str(tmp_path)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and "unknown parts ['warp']; valid choices: tests, step" in proc.stderr
