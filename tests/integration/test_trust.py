"""Runs you can trust: files read back never run code, names stay inside their folder, another
run's files are refused, and bad numbers are answered with exit code 2."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from click.testing import CliRunner, Result

import wpl_nas
from wpl_nas.cli import cli
from wpl_nas.errors import ConfigError, RunLocked
from wpl_nas.tracking.lock import LOCK_FILE


class _RunsCode:
    """Unpickling this runs ``exec``: what a crafted file in a shared run folder would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def _search_flags(space_file: Path, data_dir: Path, runs_dir: Path, name: str, *, trials: int = 3,
                  seed: int = 0) -> list[str]:
    return ["--space", str(space_file), "--data-dir", str(data_dir), "--runs-dir", str(runs_dir),
            "--study-name", name, "--trials", str(trials), "--epochs", "1", "--batch-size", "256",
            "--eval-samples", "200", "--device", "cpu", "--seed", str(seed), "--threads", "1"]


def _search(space_file: Path, data_dir: Path, runs_dir: Path, name: str, **kw: int) -> Path:
    result = CliRunner().invoke(cli, ["search", "--no-progress", *_search_flags(space_file, data_dir, runs_dir,
                                                                                name, **kw)])
    assert result.exit_code == 0, result.output
    return runs_dir / name


def _digest(folder: Path) -> dict[str, str]:
    """Every file's hash but the lock's (which names whoever last opened the folder to write)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


@pytest.fixture(scope="module")
def finished(tiny_space_file, data_dir, tmp_path_factory) -> Path:
    """A finished 3-trial search, retrained one epoch (so every kind of file a run reads back exists)."""
    run_dir = _search(tiny_space_file, data_dir, tmp_path_factory.mktemp("runs"), "x")
    result = CliRunner().invoke(cli, ["retrain", str(run_dir), "--epochs", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    return run_dir


@pytest.fixture
def copy_of(finished, tmp_path) -> Path:
    """A private copy of the finished run, in a runs folder of its own."""
    return Path(shutil.copytree(finished, tmp_path / "runs" / finished.name))


def _plant(path: Path, marker: Path, how: str) -> None:
    if how == "torch":  # a torch.save zip, as wpl-nas writes
        torch.save({"supernet": _RunsCode(marker)}, path)
    elif how == "pickle":  # a bare pickle (torch's legacy format)
        path.write_bytes(pickle.dumps(_RunsCode(marker)))
    else:  # a doctored copy of the real file: one value replaced by the payload
        state = torch.load(path, weights_only=True)
        state[next(iter(state))] = _RunsCode(marker)
        torch.save(state, path)


def _retrain_checkpoint(run: Path) -> Path:
    return next((run / "retrain").glob("trial_*/checkpoint.pt"))


# (file, command): every file the project reads back, and each command that reads it.
_READERS = [
    ("checkpoints/last.pt", "search"),
    ("checkpoints/last.pt", "export"),
    ("checkpoints/last.pt", "anatomy"),
    ("checkpoints/last.pt", "rank"),
    ("anatomy/*.pt", "anatomy"),
    ("retrain/trial_*/checkpoint.pt", "retrain"),
]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the bare pickle
@pytest.mark.parametrize("how", ["torch", "pickle", "doctored"])
@pytest.mark.parametrize(("pattern", "command"), _READERS)
def test_a_crafted_file_never_runs_code_and_is_refused_with_exit_2(
        copy_of, tiny_space_file, data_dir, tmp_path, pattern, command, how):
    target = next(copy_of.glob(pattern))
    marker = tmp_path / "code-ran"
    _plant(target, marker, how)
    before = _digest(copy_of)
    if command == "search":
        args = ["search", "--no-progress", *_search_flags(tiny_space_file, data_dir, copy_of.parent, copy_of.name,
                                                          trials=4)]
    elif command == "rank":
        args = ["rank", str(copy_of), "--archs", "2", "--epochs", "1", "--no-progress"]
    elif command == "retrain":
        args = ["retrain", str(copy_of), "--epochs", "1", "--no-progress"]
    else:
        args = [command, str(copy_of)]
    result = CliRunner().invoke(cli, args)
    assert not marker.exists(), "loading a run file ran code from it"
    assert result.exit_code == 2, result.output
    assert "cannot be read safely" in result.output and target.name in result.output
    assert "Traceback" not in result.output
    assert _digest(copy_of) == before  # nothing saved was changed


@pytest.mark.slow
def test_a_search_resumes_from_a_checkpoint_that_loads_as_weights_only(finished):
    state = torch.load(finished / "checkpoints" / "last.pt", weights_only=True)
    assert state["identity"]["study"] == "x" and state["identity"]["seed"] == 0
    assert isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)


@pytest.mark.slow
def test_a_corrupt_anatomy_snapshot_or_record_does_not_stop_a_search(copy_of, tiny_space_file, data_dir):
    for snapshot in (copy_of / "anatomy").glob("*.pt"):
        snapshot.write_bytes(b"\x00garbage")
    with (copy_of / "anatomy.jsonl").open("ab") as record:
        record.write(b"\xff\xfe not json\n")
    flags = _search_flags(tiny_space_file, data_dir, copy_of.parent, copy_of.name, trials=4)
    with pytest.warns(RuntimeWarning, match="cannot be read safely|cannot be read; dropped"):
        result = CliRunner().invoke(cli, ["search", "--no-progress", *flags])
    assert result.exit_code == 0, result.output
    assert wpl_nas.load_run(copy_of).study.trials[-1].state.name == "COMPLETE"


@pytest.mark.slow
@pytest.mark.parametrize("what", ["checkpoint", "study"])
def test_another_runs_checkpoint_or_study_is_refused(finished, copy_of, tiny_space_file, data_dir, tmp_path, what):
    """Two runs of the same name: moving one's checkpoint (or study.db) into the other is detected."""
    other = _search(tiny_space_file, data_dir, tmp_path / "elsewhere", "x", trials=2)
    name = "checkpoints/last.pt" if what == "checkpoint" else "study.db"
    shutil.copyfile(other / name, copy_of / name)
    before = _digest(copy_of)
    result = CliRunner().invoke(cli, ["search", "--no-progress",
                                      *_search_flags(tiny_space_file, data_dir, copy_of.parent, "x", trials=4)])
    assert result.exit_code == 2, result.output
    assert "another run" in result.output and "Traceback" not in result.output
    assert _digest(copy_of) == before


@pytest.mark.parametrize("name", ["../outside", "..", ".", "", "a/b", "/abs/path", "a\\b"])
def test_a_study_name_stays_a_folder_inside_runs_dir(tmp_path, name):
    runs = tmp_path / "runs"
    result = CliRunner().invoke(cli, ["search", "--runs-dir", str(runs), "--study-name", name, "--trials", "1"])
    assert result.exit_code == 2, result.output
    assert "study_name must be one folder name" in result.output and repr(name) in result.output
    assert not runs.exists() and not any(tmp_path.iterdir())
    with pytest.raises(ConfigError, match="study_name"):
        wpl_nas.SearchConfig(study_name=name).validate()


@pytest.mark.parametrize("flag", ["--lr", "--momentum", "--weight-decay", "--grad-clip", "--wpl-alpha",
                                  "--ewc-lam", "--distill-temperature", "--val-fraction"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_numbers_are_refused_everywhere(tmp_path, flag, value):
    result = CliRunner().invoke(cli, ["search", "--runs-dir", str(tmp_path / "runs"), flag, value])
    assert result.exit_code == 2, result.output
    assert "finite" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()
    # The same value from a YAML file (.nan / .inf) and from the API keyword.
    key = flag[2:].replace("-", "_")
    section, _, field = key.partition("_") if key.split("_")[0] in ("wpl", "ewc", "distill") else ("", "", key)
    yaml_value = {"nan": ".nan", "inf": ".inf", "-inf": "-.inf"}[value]
    text = f"{section}:\n  {field}: {yaml_value}\n" if section else f"{field}: {yaml_value}\n"
    (tmp_path / "c.yaml").write_text(text)
    assert yaml.safe_load(text)  # the file holds what the test means
    result = CliRunner().invoke(cli, ["search", "--config", str(tmp_path / "c.yaml"),
                                      "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "finite" in result.output, result.output
    override = {section: {field: float(value)}} if section else {field: float(value)}
    with pytest.raises(ConfigError, match="finite"):
        wpl_nas.run_search(runs_dir=str(tmp_path / "runs"), progress=False, **override)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("seed", ["-1", str(2**32), str(2**70)])
def test_seeds_outside_what_numpy_accepts_are_refused(tmp_path, seed):
    result = CliRunner().invoke(cli, ["search", "--runs-dir", str(tmp_path / "runs"), "--seed", seed])
    assert result.exit_code == 2, result.output
    assert f"seed={seed}" in result.output and "Traceback" not in result.output


_HOLD = ("import sys, time; from wpl_nas.tracking.lock import RunLock; lock = RunLock(sys.argv[1]); "
         "lock.acquire(); print('locked', flush=True); time.sleep(120)")


@pytest.mark.slow
def test_one_writer_per_run_readers_meanwhile_and_a_killed_holder_frees_it(copy_of, tiny_space_file, data_dir):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(copy_of)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        before = _digest(copy_of)
        flags = _search_flags(tiny_space_file, data_dir, copy_of.parent, copy_of.name, trials=4)
        refused = CliRunner().invoke(cli, ["search", "--no-progress", *flags])
        assert refused.exit_code == 2, refused.output
        assert f"process {holder.pid} on" in refused.output and "Traceback" not in refused.output
        assert _digest(copy_of) == before  # the second search wrote nothing, failed no trial
        # Readers take no lock.
        assert CliRunner().invoke(cli, ["report", str(copy_of)]).exit_code == 0
        assert len(wpl_nas.load_run(copy_of).study.trials) == 3
        with pytest.raises(RunLocked, match=f"process {holder.pid}"):
            objective = wpl_nas.SupernetObjective(wpl_nas.load_run(copy_of).config, run_dir=copy_of)
            objective.reconcile(wpl_nas.load_run(copy_of).study)
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # the way a crashed or killed search ends
        holder.wait()
    resumed = CliRunner().invoke(cli, ["search", "--no-progress", *flags])
    assert resumed.exit_code == 0, resumed.output
    assert len(wpl_nas.load_run(copy_of).study.trials) == 4
    assert f"process {os.getpid()} on" in (copy_of / LOCK_FILE).read_text()


# --- every bad input answered: exit 2, one line naming it, nothing written ---------------------------

_BINARY = b"\xff\xfe\x00\x81 not text"
_HUGE_CELL = """\
name: huge
dims: 1
skeleton:
  stem_channels: 8
  stages:
    - {channels: 8, cells: 1}
cell:
  nodes: 400
  edges: all
  ops: [none, conv_5]
"""


def _bad_inputs(tmp: Path, run: Path) -> dict[str, tuple[list[str], str]]:
    """Case name -> (command line, words the one-line error must hold)."""
    (tmp / "binary.yaml").write_bytes(_BINARY)
    (tmp / "binary.csv").write_bytes(_BINARY)
    (tmp / "huge.yaml").write_text(_HUGE_CELL)
    (tmp / "a-file").write_text("")
    mlp = "kind: mlp\nname: m\ndescription: m\nactivations: [relu]\n"
    (tmp / "many-widths.yaml").write_text(mlp + f"layers: 2\nwidths: {list(range(1, 5001))}\n")
    (tmp / "wide.yaml").write_text(mlp + "layers: 50\nwidths: [5000]\n")
    (tmp / "nan.csv").write_text(f"ArchitectureString,accuracy\n{run.name},nan\n")
    runs = ["--runs-dir", str(tmp / "new-runs")]
    return {
        "binary config": (["search", "--config", str(tmp / "binary.yaml"), *runs], "not UTF-8"),
        "binary space": (["search", "--space", str(tmp / "binary.yaml"), *runs], "not UTF-8"),
        "binary space shown": (["spaces", "show", str(tmp / "binary.yaml")], "not UTF-8"),
        "binary table": (["rank", str(run), "--ground-truth", str(tmp / "binary.csv")], "not a UTF-8 CSV"),
        "non-finite table": (["rank", str(run), "--ground-truth", str(tmp / "nan.csv")], "finite"),
        "huge cell": (["search", "--space", str(tmp / "huge.yaml"), *runs], "159,600 values"),
        "huge cell shown": (["spaces", "show", str(tmp / "huge.yaml")], "limit of 10,000"),
        "MLP of many widths": (["search", "--space", str(tmp / "many-widths.yaml"), *runs], "25,010,000 weight blocks"),
        "5,000-wide MLP": (["search", "--space", str(tmp / "wide.yaml"), *runs], "1,225,500,010 weights"),
        "render into a missing folder": (["spaces", "show", "mnist1d", "--render", str(tmp / "no" / "x.png")],
                                         "does not exist"),
        "runs-dir is a file": (["search", "--runs-dir", str(tmp / "a-file")], "is a file"),
        "in-memory storage": (["search", "--storage", "sqlite:///:memory:", *runs], "in-memory"),
        "unparsable storage": (["search", "--storage", "no such url", *runs], "invalid storage URL"),
        "storage that cannot be opened": (["search", "--storage", f"sqlite:///{tmp / 'no' / 'such' / 'x.db'}",
                                           *runs], "cannot open storage"),
    }


@pytest.mark.slow
def test_bad_inputs_get_exit_2_one_clear_line_and_leave_runs_untouched(copy_of, tmp_path):
    before = _digest(copy_of)
    for case, (args, words) in _bad_inputs(tmp_path, copy_of).items():
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, (case, result.output)
        assert words in result.output and "Traceback" not in result.output, (case, result.output)
        assert not (tmp_path / "new-runs").exists(), case  # nothing was created
    assert _digest(copy_of) == before


def test_a_storage_whose_driver_is_missing_names_it_and_creates_nothing(tmp_path):
    import importlib.util

    if importlib.util.find_spec("pymssql") is not None:
        pytest.skip("pymssql is installed here")
    result = CliRunner().invoke(cli, ["search", "--runs-dir", str(tmp_path / "runs"),
                                      "--storage", "mssql+pymssql://user:secret@localhost/db"])
    assert result.exit_code == 2 and "'pymssql'" in result.output, result.output
    assert "secret" not in result.output  # the password is not echoed
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_strategy_state_gone_non_finite_is_never_saved(data_dir, tmp_path):
    """SI with a vanishing damping ξ divides by ~0: the search stops at that trial and the checkpoint
    keeps the last finite state (the old behaviour saved it, and the next candidate 'diverged')."""
    from wpl_nas.errors import TrainingDiverged
    from wpl_nas.strategies import SIOptions

    # ξ = 1e-300 is 0 in float32: SI's Ω divides by zero where a weight on the path did not move.
    config = wpl_nas.SearchConfig(data_dir=str(data_dir), runs_dir=str(tmp_path), study_name="si", trials=3,
                                  epochs=1, train_samples=256, eval_samples=200, device="cpu", threads=1,
                                  strategy="si", sampler="random").replace(si=SIOptions(xi=1e-300))
    with pytest.raises(TrainingDiverged, match="strategy's state NaN or infinite"):
        wpl_nas.run_search(config, progress=False, command=["t"])
    state = torch.load(tmp_path / "si" / "checkpoints" / "last.pt", weights_only=True)
    floats = [v for v in state["strategy"].values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    assert floats and all(torch.isfinite(v).all() for v in floats)


@pytest.mark.slow
def test_resuming_against_an_empty_storage_is_refused_without_creating_a_study(copy_of, tiny_space_file, data_dir,
                                                                               tmp_path):
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    before = _digest(copy_of)
    flags = _search_flags(tiny_space_file, data_dir, copy_of.parent, copy_of.name, trials=4)
    result = CliRunner().invoke(cli, ["search", "--no-progress", *flags, "--storage", empty])
    assert result.exit_code == 2 and "has no study 'x'" in result.output, result.output
    assert optuna.get_all_study_names(storage=empty) == []
    assert _digest(copy_of) == before


def test_a_run_keeps_its_space_file_so_it_opens_from_any_folder_and_refuses_an_edited_one(
        tiny_space_file, data_dir, tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / "my.yaml").write_text(tiny_space_file.read_text())
    monkeypatch.chdir(project)

    def search(space: str, trials: int) -> Result:  # with no study name: it comes from the space file's name
        flags = _search_flags(Path(space), data_dir, tmp_path / "runs", "-", trials=trials)
        at = flags.index("--study-name")
        return CliRunner().invoke(cli, ["search", "--no-progress", *flags[:at], *flags[at + 2:]])

    assert search("my.yaml", 2).exit_code == 0  # a path relative to here
    run = tmp_path / "runs" / "my-wpl"
    assert (run / "space" / "my.yaml").read_text() == tiny_space_file.read_text()

    monkeypatch.chdir(tmp_path)  # where "my.yaml" names nothing
    for command in (["report", str(run)], ["export", str(run)], ["select", str(run)]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 0, (command, result.output)
    assert search("project/my.yaml", 3).exit_code == 0  # the same file by another path: resumes

    (project / "my.yaml").write_text(tiny_space_file.read_text().replace("channels: 16", "channels: 24"))
    before = _digest(run)
    result = search("project/my.yaml", 4)
    assert result.exit_code == 2 and "space" in result.output and "Traceback" not in result.output
    assert _digest(run) == before


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(path, options)``: a small tmpfs at ``path`` (a real file system that can fill up or
    turn read-only); skipped where this process may not mount one."""
    mounted: list[Path] = []

    def mount(path: Path, options: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        verb = ["-o", f"remount,{options}"] if path in mounted else ["-t", "tmpfs", "-o", options, "tmpfs"]
        done = subprocess.run(["mount", *verb, str(path)], capture_output=True, text=True)
        if done.returncode != 0 and path not in mounted:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
        assert done.returncode == 0, done.stderr
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _final_scores(run: Path) -> list[float]:
    return [row["final"] for row in json.loads((run / "final.json").read_text())["rows"]]


def test_a_full_disk_stops_a_search_with_one_line_and_it_resumes_exactly_once_space_is_freed(
        tiny_space_file, data_dir, tmp_path, tmpfs):
    whole = _search(tiny_space_file, data_dir, tmp_path / "runs", "whole", trials=5)
    size = sum(p.stat().st_size for p in whole.rglob("*") if p.is_file())
    disk = tmpfs(tmp_path / "disk", f"size={size // 2}")  # room for about half of the run's files

    flags = _search_flags(tiny_space_file, data_dir, disk, "whole", trials=5)
    result = CliRunner().invoke(cli, ["search", "--no-progress", *flags])
    assert result.exit_code == 1, result.output
    assert "No space left on device" in result.output and "rerun the same command" in result.output
    assert "Traceback" not in result.output and not list(disk.rglob("*.tmp"))

    tmpfs(disk, "size=64m")  # space freed
    result = CliRunner().invoke(cli, ["search", "--no-progress", *flags])
    assert result.exit_code == 0, result.output
    assert _final_scores(disk / "whole") == _final_scores(whole)  # as if nothing had happened


def test_a_read_only_run_folder_is_refused_with_exit_2_and_left_as_it_was(tiny_space_file, data_dir, tmp_path,
                                                                           tmpfs):
    runs = tmpfs(tmp_path / "ro", "size=64m")
    flags = _search_flags(tiny_space_file, data_dir, runs, "r", trials=2)
    # in another process, so that no file of the run stays open here (which would keep it writable)
    subprocess.run([sys.executable, "-m", "wpl_nas", "search", "--no-progress", *flags], check=True,
                   capture_output=True)
    run = runs / "r"
    tmpfs(runs, "ro")
    before = _digest(run)
    for args in (["search", "--no-progress", *_search_flags(tiny_space_file, data_dir, runs, "r", trials=3)],
                 ["search", "--no-progress", *_search_flags(tiny_space_file, data_dir, runs, "other", trials=3)],
                 ["report", str(run)], ["export", str(run)]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2 and "Read-only file system" in result.output, (args, result.output)
        assert "Traceback" not in result.output and result.output.count("Error: ") == 1
    assert _digest(run) == before and not (runs / "other").exists()
