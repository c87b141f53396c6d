"""The embedded instance's event log: Dagster's SQLite storage without a disk flush per event.

Dagster's `SqliteEventLogStorage` opens a new engine and connection for every event it stores and commits
it with SQLite's default `synchronous=FULL`; closing the last connection to a database in WAL mode also
checkpoints it. On this project's quickstart (672 arrival hours in one ingest run: about 4,000
materialization and planned events, each written to the run's database and the cross-run index) those
flushes were most of the ingest run's wall time.

`BufferedSqliteEventLogStorage` keeps one connection per database open (a few at a time, the most recently
used) and sets `synchronous=NORMAL`, SQLite's recommended setting for WAL: a commit is durable once the
write-ahead log is flushed at the next checkpoint, so an application crash loses nothing and the database
stays consistent, while a power loss may drop the last events. That trade is right for the project-local
development instance; the production profile keeps its event log in PostgreSQL (deploy/dagster.yaml).

Selected by the project's `dagster.yaml` (`recsys_platform.cli` writes it into a new DAGSTER_HOME):

    event_log_storage:
      module: orchestration.instance_storage
      class: BufferedSqliteEventLogStorage
      config:
        base_dir: <DAGSTER_HOME>/storage
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

# Databases kept open: the cross-run index and the runs being written or watched at the same time.
OPEN_DATABASES = 8


def _flush_at_checkpoints(dbapi_connection, _record) -> None:
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


class BufferedSqliteEventLogStorage(SqliteEventLogStorage):
    """`SqliteEventLogStorage` with one open connection per database (at most `OPEN_DATABASES`) and
    `synchronous=NORMAL` (see the module docstring). Same files, schema and migrations as Dagster's; a
    relative `base_dir` is relative to DAGSTER_HOME."""

    def __init__(self, base_dir: str, inst_data=None) -> None:
        self._engines: OrderedDict[str, Engine] = OrderedDict()  # used and changed only under _db_lock
        if not os.path.isabs(base_dir):
            base_dir = os.path.join(os.environ.get("DAGSTER_HOME", os.getcwd()), base_dir)
        super().__init__(base_dir, inst_data)

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> BufferedSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)  # the base class builds itself here, not `cls`

    def _engine(self, shard: str) -> Engine:
        engine = self._engines.pop(shard, None)
        if engine is None:
            engine = create_engine(
                self.conn_string_for_shard(shard),
                poolclass=StaticPool,  # one connection, reused: every use holds _db_lock
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
            )
            event.listen(engine, "connect", _flush_at_checkpoints)
        self._engines[shard] = engine
        while len(self._engines) > OPEN_DATABASES:
            self._engines.popitem(last=False)[1].dispose()
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def _close(self, shards: list[str] | None = None) -> None:
        with self._db_lock:
            for shard in list(self._engines) if shards is None else shards:
                if (engine := self._engines.pop(shard, None)) is not None:
                    engine.dispose()

    def wipe(self) -> None:
        self._close()  # the run databases are about to be deleted: never write to an unlinked file
        super().wipe()

    def delete_events(self, run_id: str) -> None:
        super().delete_events(run_id)
        self._close([run_id])

    def dispose(self) -> None:
        self._close()
        super().dispose()


# The dagster.yaml block that selects this storage, with Dagster's default location for event logs.
EVENT_LOG_YAML = """\
event_log_storage:
  module: orchestration.instance_storage
  class: BufferedSqliteEventLogStorage
  config:
    base_dir: history/runs
"""
