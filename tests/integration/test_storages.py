"""Storages for real: a search, its resume and the commands that read it, on Optuna's journal file
and on a PostgreSQL server, with the password never written or printed.

The PostgreSQL tests need a server: WPL_NAS_TEST_POSTGRES holds its URL, password included
(`.ci/postgres.sh start DIR` starts a throw-away one and prints it; `.ci/run` does). Without it
they are skipped, unless WPL_NAS_REQUIRE_POSTGRES is set (as in CI), where a missing server is a
failure.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import uuid
import wsgiref.util
from pathlib import Path

import optuna
import pytest
import sqlalchemy.engine
from click.testing import CliRunner
from optuna.trial import TrialState

from wpl_nas.cli import cli
from wpl_nas.run_folder import load_run
from wpl_nas.storage import ENV_VAR, mask_storage, open_storage

SECRET = "n0t-Sh0wn-4nywhere"


@pytest.fixture
def postgres_url(monkeypatch, tmp_path) -> str:
    """The test server's URL. The password reaches the driver only from the URL or WPL_NAS_STORAGE
    here: not from PGPASSWORD or a ~/.pgpass of the machine."""
    url = os.environ.get("WPL_NAS_TEST_POSTGRES")
    if not url:
        if os.environ.get("WPL_NAS_REQUIRE_POSTGRES"):
            pytest.fail("WPL_NAS_REQUIRE_POSTGRES is set, but WPL_NAS_TEST_POSTGRES (the server's URL) is not")
        pytest.skip("no PostgreSQL server: set WPL_NAS_TEST_POSTGRES (`.ci/postgres.sh start DIR` starts one)")
    if not sqlalchemy.engine.make_url(url).password:
        pytest.fail("WPL_NAS_TEST_POSTGRES must hold a password: the tests check that it is never written")
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))
    monkeypatch.delenv(ENV_VAR, raising=False)
    return url


def _flags(space_file: Path, data_dir: Path, runs_dir: Path, name: str, trials: int) -> list[str]:
    return ["search", "--no-progress", "--space", str(space_file), "--data-dir", str(data_dir), "--runs-dir",
            str(runs_dir), "--study-name", name, "--trials", str(trials), "--epochs", "1", "--batch-size", "256",
            "--train-samples", "512", "--eval-samples", "200", "--device", "cpu", "--threads", "1"]


def _invoke(args: list[str], code: int = 0) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output, result.output
    return result.output


def _finished(run_dir: Path) -> int:
    return len(load_run(run_dir).study.get_trials(states=(TrialState.COMPLETE,)))


def _dashboard_lists(run_dir: Path, monkeypatch) -> list[str]:
    """`wpl-nas dashboard RUN_DIR`, served in-process: the names of the studies its API lists."""
    optuna_dashboard = pytest.importorskip("optuna_dashboard")
    listed: list[str] = []

    def serve(storage, host, port, artifact_store=None):  # optuna_dashboard.run_server, without a socket
        app = optuna_dashboard.wsgi(storage, artifact_store=artifact_store)
        environ: dict = {}
        wsgiref.util.setup_testing_defaults(environ)
        environ["PATH_INFO"] = "/api/studies"
        status = []
        body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
        assert status == ["200 OK"], body[:300]
        listed.extend(s["study_name"] for s in json.loads(body)["study_summaries"])

    monkeypatch.setattr(optuna_dashboard, "run_server", serve)
    _invoke(["dashboard", run_dir])
    return listed


@pytest.mark.slow
def test_a_journal_storage_searches_resumes_and_serves_every_reader(tiny_space_file, data_dir, tmp_path,
                                                                    monkeypatch):
    runs = tmp_path / "runs"
    run_dir, journal = runs / "tiny", runs / "tiny" / "journal.log"
    output = _invoke([*_flags(tiny_space_file, data_dir, runs, "tiny", 2), "--storage", journal])
    assert journal.is_file() and not (run_dir / "study.db").exists()
    assert f"(storage {journal})" in output
    _invoke(_flags(tiny_space_file, data_dir, runs, "tiny", 3))  # resumed: the run's config.yaml names the journal
    assert isinstance(load_run(run_dir).optuna_storage, optuna.storages.JournalStorage)
    assert _finished(run_dir) == 3
    for command in (["select"], ["export"], ["anatomy"], ["report"],
                    ["rank", "--archs", "2", "--seeds", "1", "--epochs", "1", "--no-progress"]):
        _invoke([command[0], run_dir, *command[1:]])
    assert _dashboard_lists(run_dir, monkeypatch) == ["tiny"]
    # Resuming against another (empty) journal is refused, and leaves no empty journal behind.
    other = tmp_path / "other.log"
    output = _invoke([*_flags(tiny_space_file, data_dir, runs, "tiny", 4), "--storage", other], code=2)
    assert "has no study 'tiny'" in output and not other.exists()


@pytest.mark.slow
def test_a_postgresql_search_resumes_and_is_read_without_its_password_ever_written(
        postgres_url, tiny_space_file, data_dir, tmp_path, monkeypatch):
    password = str(sqlalchemy.engine.make_url(postgres_url).password)
    shown = mask_storage(postgres_url)
    name = f"pg-{uuid.uuid4().hex[:8]}"  # the server outlives the test: a study of its own
    runs = tmp_path / "runs"
    run_dir = runs / name
    # postgresql:// as users write it: whichever driver is installed.
    assert postgres_url.startswith("postgresql://")
    output = _invoke([*_flags(tiny_space_file, data_dir, runs, name, 2), "--storage", postgres_url])
    assert f"(storage {shown})" in output and password not in output
    saved = (run_dir / "config.yaml").read_text()
    assert f"storage: {shown}" in saved and password not in saved
    # Resumed with the password from the environment (the run folder has only ***) ...
    monkeypatch.setenv(ENV_VAR, postgres_url)
    assert password not in _invoke(_flags(tiny_space_file, data_dir, runs, name, 3))
    monkeypatch.delenv(ENV_VAR)
    # ... or from --storage given again.
    assert password not in _invoke([*_flags(tiny_space_file, data_dir, runs, name, 4), "--storage", postgres_url])
    for path in run_dir.rglob("*"):  # config.yaml with its commands and history, checkpoints, events, ...
        assert not path.is_file() or password.encode() not in path.read_bytes(), path
    # A reader without the password is refused with the ways to give it, and the password is not shown.
    output = _invoke(["report", run_dir], code=2)
    assert f"cannot open storage {shown!r}" in output and ENV_VAR in output and password not in output
    monkeypatch.setenv(ENV_VAR, postgres_url)
    assert password not in _invoke(["report", run_dir]) + _invoke(["select", run_dir])
    assert _finished(run_dir) == 4
    assert name in _dashboard_lists(run_dir, monkeypatch)


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_postgresql_through_each_installed_driver(postgres_url, driver):
    pytest.importorskip(driver)
    url = postgres_url.replace("postgresql://", f"postgresql+{driver}://", 1)
    name = f"{driver}-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(study_name=name, storage=open_storage(url))
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=2)
    assert len(optuna.load_study(study_name=name, storage=open_storage(url, create=False)).trials) == 2
    optuna.delete_study(study_name=name, storage=open_storage(url))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("case", ["no server", "no driver", "journal in a missing folder"])
def test_a_storage_that_cannot_be_opened_creates_nothing(case, tiny_space_file, data_dir, tmp_path, monkeypatch):
    storage = f"postgresql://me:{SECRET}@127.0.0.1:{_closed_port()}/db"
    if case == "no driver":
        for module in ("psycopg", "psycopg2"):  # as if neither were installed
            monkeypatch.setitem(sys.modules, module, None)
    elif case == "journal in a missing folder":
        storage = str(tmp_path / "no" / "such" / "journal.log")
    output = _invoke([*_flags(tiny_space_file, data_dir, tmp_path / "runs", "x", 2), "--storage", storage], code=2)
    if case == "no driver":
        assert 'pip install "wpl-nas[postgres]"' in output
    else:
        assert "cannot open storage" in output
    assert SECRET not in output and not (tmp_path / "runs").exists() and not (tmp_path / "no").exists()
