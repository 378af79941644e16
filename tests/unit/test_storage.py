"""Storages without a server: URLs checked, drivers chosen, passwords masked, journal files opened."""

from __future__ import annotations

import sqlite3
import sys

import optuna
import pytest
import yaml

from wpl_nas.config import SearchConfig, resume_changes
from wpl_nas.errors import ConfigError
from wpl_nas.storage import (
    ENV_VAR,
    check_storage_url,
    journal_path,
    mask_storage,
    open_storage,
    scrub,
    sqlite_write_ahead,
)

SECRET = "s3cr3t-Pw"


@pytest.mark.parametrize(("text", "shown"), [
    (f"postgresql://me:{SECRET}@db.lan:5432/nas", "postgresql://me:***@db.lan:5432/nas"),
    (f"--storage=postgresql+psycopg2://me:{SECRET}@h/db?sslmode=require",
     "--storage=postgresql+psycopg2://me:***@h/db?sslmode=require"),
    ("postgresql://me:p@ss@h/db", "postgresql://me:***@h/db"),  # a stray '@' in the password: hidden whole
    (f"error: cannot reach mysql://u:{SECRET}@h/db and postgresql://v:{SECRET}@g/e",
     "error: cannot reach mysql://u:***@h/db and postgresql://v:***@g/e"),
    ("postgresql://me@h/db", "postgresql://me@h/db"),  # no password, nothing to hide
    ("sqlite:///runs/a:b@c.db", "sqlite:///runs/a:b@c.db"),  # a path, not a password
    ("runs/x/journal.log", "runs/x/journal.log"),
    ("postgresql://me:***@h/db", "postgresql://me:***@h/db"),  # masking twice changes nothing
])
def test_passwords_are_masked_wherever_they_appear(text, shown):
    assert mask_storage(text) == shown
    assert SECRET not in scrub(f"{text} ({SECRET})", f"postgresql://me:{SECRET}@h/db")


def test_journal_files_are_storages():
    assert journal_path("runs/x/journal.log") is not None and journal_path("x.JSONL") is not None
    assert journal_path("sqlite:///runs/x.log") is None and journal_path("runs/x.db") is None
    check_storage_url("runs/x/journal.log")


def test_bad_storages_are_refused_with_a_hint(tmp_path):
    (tmp_path / "folder.log").mkdir()
    cases = {
        "runs/study.db": ["invalid storage URL 'runs/study.db'", "sqlite:///runs/study.db", ".log or .jsonl"],
        f"postgres://me:{SECRET}@h/db": ["postgresql://", "postgres://me:***@h/db"],
        "nosuchdb://h/db": ["invalid storage URL 'nosuchdb://h/db'"],
        "sqlite:///:memory:": ["in-memory"],
        str(tmp_path / "folder.log"): ["is a folder"],
    }
    for storage, words in cases.items():
        with pytest.raises(ConfigError) as info:
            check_storage_url(storage)
        assert all(w in str(info.value) for w in words), (storage, str(info.value))
        assert SECRET not in str(info.value)


def _without(monkeypatch, *modules: str) -> None:
    """Make ``modules`` impossible to import, as if they were not installed."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_a_url_without_a_driver_takes_any_installed_one(monkeypatch):
    from wpl_nas.storage import _database_url

    _without(monkeypatch, "psycopg")  # psycopg2 alone: postgresql:// must work with it
    monkeypatch.setitem(sys.modules, "psycopg2", type(sys)("psycopg2"))  # importable, whether installed or not
    assert _database_url(f"postgresql://me:{SECRET}@h/db").drivername == "postgresql+psycopg2"


def test_a_missing_driver_names_the_pip_line(monkeypatch):
    _without(monkeypatch, "psycopg", "psycopg2")
    with pytest.raises(ConfigError) as info:
        check_storage_url(f"postgresql://me:{SECRET}@h/db")
    assert 'pip install "wpl-nas[postgres]"' in str(info.value) and SECRET not in str(info.value)
    with pytest.raises(ConfigError, match="'psycopg2', which is not installed: pip install psycopg2-binary"):
        check_storage_url(f"postgresql+psycopg2://me:{SECRET}@h/db")


def test_a_masked_password_comes_from_the_environment_when_it_names_the_same_storage(monkeypatch):
    from wpl_nas.storage import _connectable

    saved = "postgresql+psycopg://me:***@h/db"
    monkeypatch.setenv(ENV_VAR, f"postgresql+psycopg://me:{SECRET}@h/db")
    url, hint = _connectable(saved)
    assert url.password == SECRET and hint == ""
    monkeypatch.setenv(ENV_VAR, f"postgresql+psycopg://me:{SECRET}@h/another")
    url, hint = _connectable(saved)  # another storage's password is not used: none is (PGPASSWORD, ~/.pgpass)
    assert url.password is None and ENV_VAR in hint and "another storage" in hint and SECRET not in hint
    monkeypatch.delenv(ENV_VAR)
    url, hint = _connectable(f"postgresql+psycopg://me:{SECRET}@h/db")  # a full URL is used as it is
    assert url.password == SECRET and hint == ""


def test_a_journal_is_opened_created_or_required(tmp_path):
    path = tmp_path / "journal.log"
    with pytest.raises(ConfigError, match="does not exist"):
        open_storage(str(path), create=False)  # reading a run: a missing journal is an error, not a new file
    assert not path.exists()
    storage = open_storage(str(path))
    optuna.create_study(study_name="s", storage=storage).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    again = optuna.load_study(study_name="s", storage=open_storage(str(path), create=False))
    assert len(again.trials) == 2
    with pytest.raises(ConfigError, match="cannot open storage"):
        open_storage(str(tmp_path / "no" / "such" / "journal.log"))


def test_the_saved_config_and_its_history_hold_no_password(tmp_path):
    full = f"postgresql://me:{SECRET}@h/db"
    config = SearchConfig(storage=full)
    path = tmp_path / "config.yaml"
    config.dump(path, extra={"command": ["wpl-nas", "search", "--storage", full],
                             "history": [{"command": [f"--storage={full}"]}]})
    text = path.read_text()
    assert SECRET not in text and "postgresql://me:***@h/db" in text
    saved = SearchConfig.from_dict({k: v for k, v in yaml.safe_load(text).items() if k not in ("command", "history")})
    # Resuming with the full URL (or the masked one) is no change of storage; another database is.
    assert resume_changes(saved, config, run_dir=tmp_path) == {}
    assert resume_changes(saved, saved, run_dir=tmp_path) == {}
    moved = resume_changes(saved, config.replace(storage=f"postgresql://me:{SECRET}@h/db2"), run_dir=tmp_path)
    assert moved == {"storage": ["postgresql://me:***@h/db", "postgresql://me:***@h/db2"]}


def _mode(path):
    connection = sqlite3.connect(path)  # closed at once: an open connection would hold the file
    try:
        return connection.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        connection.close()


def test_an_sqlite_study_commits_through_a_log_while_searched_and_is_whole_in_its_file_after(tmp_path):
    db = tmp_path / "study.db"
    storage = open_storage(f"sqlite:///{db}")
    with sqlite_write_ahead(storage):
        study = optuna.create_study(study_name="s", storage=storage)
        study.set_user_attr("k", 1)
        assert _mode(db) == "wal" and (tmp_path / "study.db-wal").is_file()
    assert _mode(db) == "delete" and not (tmp_path / "study.db-wal").exists()
    copy = tmp_path / "copy.db"  # the file alone holds every record
    copy.write_bytes(db.read_bytes())
    assert optuna.load_study(study_name="s", storage=f"sqlite:///{copy}").user_attrs == {"k": 1}


def test_a_reader_holding_the_file_leaves_it_in_log_mode_without_a_wait_or_a_loss(tmp_path):
    db = tmp_path / "study.db"
    storage = open_storage(f"sqlite:///{db}")
    reader = sqlite3.connect(db)
    try:
        with sqlite_write_ahead(storage):
            optuna.create_study(study_name="s", storage=storage).set_user_attr("k", 2)
            reader.execute("BEGIN")  # a dashboard in the middle of a read
            reader.execute("SELECT count(*) FROM studies").fetchone()
        assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        reader.close()
    assert optuna.load_study(study_name="s", storage=f"sqlite:///{db}").user_attrs == {"k": 2}


def test_other_storages_keep_their_journal(tmp_path):
    journal = tmp_path / "journal.log"
    storage = open_storage(str(journal))
    with sqlite_write_ahead(storage):
        optuna.create_study(study_name="s", storage=storage)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.log"]
