"""Where a study lives: storage URLs and journal files checked, opened, and shown without passwords.

``--storage`` takes what Optuna stores studies in:

- an SQLAlchemy database URL: ``sqlite:///runs/x/study.db`` (the default, inside the run folder),
  ``postgresql://user:password@host/db``, ``mysql://...``. A URL that names no driver
  (``postgresql://``) uses whichever driver of its database is installed (psycopg 3 or psycopg2 for
  PostgreSQL); with none, the error gives the ``pip install`` line that adds one;
- a journal file, a path ending in ``.log`` or ``.jsonl`` (``runs/x/journal.log``): Optuna's
  ``JournalStorage`` on a ``JournalFileBackend``, an append-only file that needs no server.

A password is never written or printed: the run folder's ``config.yaml``, the search summary,
the history of changes and every error show it as ``***``. Opening a URL whose password is
``***`` (a run folder's) takes the full URL from the environment variable ``WPL_NAS_STORAGE``
when it names the same storage, and otherwise connects without a password, which lets the
driver find it (PostgreSQL: ``PGPASSWORD`` or ``~/.pgpass``).

An SQLite study is kept in write-ahead-log mode while a search writes to it
(:func:`sqlite_write_ahead`): a search commits about 80 small records per trial, and each commit of
SQLite's default rollback journal waits for three syncs to disk, the write-ahead log's for one (as
durable; on our 2-core machine the commits took a fifth of the time with the disk busy, half with
it quiet: ``benchmarks/README.md``). When the search ends the file goes back to the rollback
journal, so that ``study.db`` alone holds the whole study again (it can be copied, or opened
read-only).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy.engine
import sqlalchemy.exc

from wpl_nas.errors import ConfigError, reason

if TYPE_CHECKING:
    import optuna

__all__ = ["ENV_VAR", "JOURNAL_SUFFIXES", "MASK", "check_storage_url", "journal_path", "mask_storage",
           "open_storage", "scrub", "sqlite_write_ahead"]

#: The environment variable that holds a storage's full URL, password included, for run folders
#: that keep it masked.
ENV_VAR = "WPL_NAS_STORAGE"

#: A ``--storage`` without ``://`` ending in one of these is an Optuna journal file.
JOURNAL_SUFFIXES = (".log", ".jsonl")

#: What a password is shown as (SQLAlchemy's own mask).
MASK = "***"

# ``scheme://user:password@``: the password runs to the last ``@`` of the word, so that a password
# with a stray ``@`` is hidden whole (SQLAlchemy's parser stops at the first one).
_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][\w+.-]*://[^:/\s]*:)[^\s]*@")

# For a URL that names no driver: the drivers tried, in order, and what installs one.
_DEFAULT_DRIVERS = {"postgresql": ("psycopg", "psycopg2"), "mysql": ("mysqldb", "pymysql")}
_INSTALL_ANY = {"postgresql": 'pip install "wpl-nas[postgres]"', "mysql": "pip install PyMySQL"}
# The pip package of a driver whose name is not its package's.
_PACKAGES = {"psycopg": '"psycopg[binary]"', "psycopg2": "psycopg2-binary", "mysqldb": "mysqlclient",
             "pymysql": "PyMySQL"}

_EXAMPLES = ("sqlite:///runs/study.db, postgresql://user:password@host/database, or a journal file "
             "path ending in .log or .jsonl such as runs/study/journal.log")


def mask_storage(text: str) -> str:
    """``text`` (a storage URL, a command-line argument, an error message) with the password of
    every ``scheme://user:password@`` in it replaced by ``***``."""
    return _PASSWORD.sub(rf"\g<head>{MASK}@", text)


def journal_path(storage: str) -> Path | None:
    """The journal file ``storage`` names, or None when it is a database URL."""
    if "://" in storage or not storage.lower().endswith(JOURNAL_SUFFIXES):
        return None
    return Path(storage)


def check_storage_url(storage: str) -> None:
    """Check that Optuna can open ``storage`` (a database URL or a journal file path), without
    connecting or writing: it parses, and its database driver can be imported.

    Raises:
        ConfigError: the URL does not parse, is an in-memory database, or needs a driver that is not
            installed (the message gives the ``pip install`` line); the journal path is a folder.
    """
    path = journal_path(storage)
    if path is not None:
        if path.is_dir():
            raise ConfigError(f"storage {storage!r} is a folder; a journal storage is a file, e.g. "
                              f"{(path / 'journal.log').as_posix()}")
        return
    _database_url(storage)


def open_storage(storage: str, *, create: bool = True) -> optuna.storages.BaseStorage:
    """Open ``storage`` for Optuna: an ``RDBStorage`` with its driver and password filled in (see the
    module's docstring), or a ``JournalStorage`` on a journal file.

    Args:
        storage: A database URL or a journal file path, as the user gave it or a run folder saved it.
        create: Whether a missing journal file may be created (False when reading a run).

    Raises:
        ConfigError: the storage is invalid or cannot be opened; the message shows it with its
            password masked, and says how to give the password when the run folder lacks it.
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend

    check_storage_url(storage)
    shown = mask_storage(storage)
    path = journal_path(storage)
    if path is not None:
        if not create and not path.is_file():
            raise ConfigError(f"journal file {storage!r} does not exist (journal paths are relative to the "
                              "folder the command runs in)")
        try:
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        except OSError as exc:
            raise ConfigError(f"cannot open storage {shown!r}: {reason(exc)}") from None
    url, hint = _connectable(storage)
    try:
        return optuna.storages.RDBStorage(url.render_as_string(hide_password=False))
    except (ImportError, RuntimeError, sqlalchemy.exc.SQLAlchemyError) as exc:
        raise ConfigError(f"cannot open storage {shown!r}: {scrub(reason(exc), url)}{hint}") from None


@contextlib.contextmanager
def sqlite_write_ahead(storage: optuna.storages.BaseStorage) -> Iterator[None]:
    """While the block runs, an SQLite ``storage`` commits through a write-ahead log (one sync to
    disk a commit instead of three; as durable); afterwards its file is in rollback-journal mode
    again and holds every record (the log is folded into it and deleted). Other storages are left
    as they are.

    The journal mode is a property of the database file, so other processes that open the study
    meanwhile (the dashboard) use the log too. Going back needs the file to itself: with another
    process reading it (a dashboard left open), the file stays in write-ahead-log mode, which every
    SQLite reader handles; a search that is killed leaves the log beside the file, and SQLite folds it
    in when the study is next opened.
    """
    import optuna

    engine = storage.engine if isinstance(storage, optuna.storages.RDBStorage) else None
    if engine is None or engine.dialect.name != "sqlite":
        yield
        return
    _journal_mode(engine, "wal")
    try:
        yield
    finally:
        engine.dispose()  # the pool's idle connections would keep the file in write-ahead-log mode
        _journal_mode(engine, "delete")


def _journal_mode(engine: sqlalchemy.engine.Engine, mode: str) -> None:
    """Set SQLite's journal mode on ``engine``'s file; no wait and no error when another connection
    holds the file (the mode then stays as it was: a speed-up missed, nothing lost)."""
    with contextlib.suppress(sqlalchemy.exc.OperationalError), engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA busy_timeout = 0")
        connection.exec_driver_sql(f"PRAGMA journal_mode = {mode}")


def scrub(text: str, storage: str | sqlalchemy.engine.URL | None = None) -> str:
    """``text`` (an error message) with URL passwords masked, and the password of ``storage`` too
    wherever it appears (when it is long enough not to be mistaken for a piece of a word)."""
    text = mask_storage(text)
    password = None
    if isinstance(storage, sqlalchemy.engine.URL):
        password = storage.password
    elif storage is not None and journal_path(storage) is None:
        try:
            password = sqlalchemy.engine.make_url(storage).password
        except (sqlalchemy.exc.ArgumentError, ValueError):
            password = None
    if password and len(password) >= 4 and password != MASK:
        text = text.replace(password, MASK)
    return text


# --- helpers -------------------------------------------------------------------------------
def _database_url(storage: str) -> sqlalchemy.engine.URL:
    """``storage`` parsed, checked and with a driver named (see :func:`check_storage_url`)."""
    shown = mask_storage(storage)
    try:
        url = sqlalchemy.engine.make_url(storage)
        dialect = url.get_dialect()
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ValueError) as exc:
        hint = ""
        if storage.startswith("postgres://"):
            hint = " (SQLAlchemy spells it postgresql://)"
        elif "://" not in storage and storage.lower().endswith((".db", ".sqlite", ".sqlite3")):
            hint = f" (an SQLite file is written sqlite:///{storage})"
        raise ConfigError(f"invalid storage URL {shown!r}{hint}: {scrub(str(exc), storage)}. Expected an SQLAlchemy "
                          f"database URL or an Optuna journal file: {_EXAMPLES}") from None
    backend = url.get_backend_name()
    if backend == "sqlite" and url.database in (None, "", ":memory:"):
        raise ConfigError(f"storage {shown!r} is an in-memory SQLite database: the study would vanish when the "
                          "search ends and could not be resumed; give a file, e.g. sqlite:///runs/study.db")
    if "+" not in url.drivername and backend in _DEFAULT_DRIVERS:
        for driver in _DEFAULT_DRIVERS[backend]:
            named = url.set(drivername=f"{backend}+{driver}")
            try:
                named.get_dialect().import_dbapi()
            except ImportError:
                continue
            return named
        drivers = " or ".join(_DEFAULT_DRIVERS[backend])
        raise ConfigError(f"storage {shown!r} needs a {backend} database driver ({drivers}), and none is "
                          f"installed: {_INSTALL_ANY[backend]}")
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        driver = url.get_driver_name()
        package = _PACKAGES.get(driver, exc.name or driver)
        other = f", or leave the driver out ({backend}://...) to use any installed one" \
            if backend in _DEFAULT_DRIVERS else ""
        raise ConfigError(f"storage {shown!r} needs the database driver {exc.name or driver!r}, which is not "
                          f"installed: pip install {package}{other}") from None
    return url


def _connectable(storage: str) -> tuple[sqlalchemy.engine.URL, str]:
    """The URL to connect to ``storage`` with, and the hint to add to a failure to connect.

    A masked password (``***``, as a run folder keeps it) is replaced by the full URL in
    ``WPL_NAS_STORAGE`` when that names the same storage, or else dropped (the driver may find it:
    PGPASSWORD, ~/.pgpass)."""
    url = _database_url(storage)
    if url.password != MASK:
        return url, ""
    full = os.environ.get(ENV_VAR, "").strip()
    if full and mask_storage(full) == mask_storage(storage):
        return _database_url(full), ""
    other = f"; {ENV_VAR} is set, but to another storage ({mask_storage(full)!r})" if full else ""
    hint = (f". Its password is not saved in the run folder: give the full URL again with --storage (wpl-nas "
            f"search), or in the environment variable {ENV_VAR} (every command), or let the driver find it "
            f"(PostgreSQL: PGPASSWORD or ~/.pgpass){other}")
    return url._replace(password=None), hint
