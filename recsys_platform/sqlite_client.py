"""The SQLite plumbing the online store and the push queue share: the path of a sqlite:/// URL, and a connection
in WAL mode that any thread may use, so readers never block the writer and a busy lock waits instead of failing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

SQLITE_SCHEME = "sqlite:///"


def sqlite_path(url: str) -> str:
    """The absolute file path of a `sqlite:///abs/path` URL (a missing leading slash is added)."""
    path = url.removeprefix(SQLITE_SCHEME)
    return path if path.startswith("/") else "/" + path


def connect_sqlite(path: str | Path, busy_timeout_ms: int) -> sqlite3.Connection:
    """An autocommit connection (transactions are explicit BEGINs) usable from any thread, waiting up to
    `busy_timeout_ms` for another writer's lock, with synchronous=NORMAL: SQLite's recommended setting in WAL mode
    (a commit is durable once the WAL is checkpointed; a power cut can lose the last commits, never corrupt)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000)
    conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def enable_wal(conn: sqlite3.Connection) -> None:
    """Put the connection's database file in WAL mode (the mode is kept in the file: once per file is enough);
    sqlite3.OperationalError when the file system cannot hold a WAL."""
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise sqlite3.OperationalError(f"could not enable WAL (journal_mode={mode})")
