"""SQLite (WAL) backend of the two-slot online store: the embedded default."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from recsys_platform.serve.online_store.base import (
    SLOTS,
    NothingDeployedError,
    OnlineStore,
    Pointer,
    ReadResult,
    SlotInfo,
    SlotStateError,
    StaleWriteError,
    StoreUnavailableError,
    check_row,
    namespace_checksum,
    validate_namespace,
    validate_slot,
)
from recsys_platform.sqlite_client import connect_sqlite, enable_wal

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    slot TEXT NOT NULL, ns TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (slot, ns, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS slots (
    slot TEXT PRIMARY KEY, model_version TEXT, snapshot_id TEXT, state TEXT NOT NULL,
    written_at TEXT, row_counts TEXT NOT NULL DEFAULT '{}', checksums TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS pointer (
    id INTEGER PRIMARY KEY CHECK (id = 1), active_slot TEXT NOT NULL, model_version TEXT NOT NULL,
    snapshot_id TEXT NOT NULL, deployed_at TEXT NOT NULL
);
"""
# SQLite's default limit on bound parameters is 32766; stay well below it per IN (...) query.
_MAX_KEYS_PER_QUERY = 900
# Reads of up to this many keys (all namespaces) run as one statement with the pointer (`_read_one_statement`).
_MAX_KEYS_PER_STATEMENT = 8


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class SQLiteOnlineStore(OnlineStore):
    """Two slots in one SQLite file in WAL mode; readers never block the writer or each other."""

    inline_reads = True  # a memory-mapped lookup takes ~50 us: cheaper than a thread hop

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000, create: bool = True) -> None:
        self.path = Path(path)
        self.create = create
        self.url = f"sqlite:///{self.path}"
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._schema_ready = False

    # --- connections -------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if not self.create and not self.path.is_file():
            raise StoreUnavailableError(
                f"no online store file at {self.path}: check RECSYS_ONLINE_STORE_URL (the training cycle creates "
                "the store on its first deploy)"
            )
        try:
            conn = connect_sqlite(self.path, self._busy_timeout_ms)
            conn.execute("PRAGMA mmap_size=268435456")
            conn.execute("PRAGMA cache_size=-65536")
            with self._lock:
                if not self._schema_ready:
                    enable_wal(conn)
                    conn.executescript(_SCHEMA)
                    self._schema_ready = True
                self._connections.append(conn)
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"sqlite {self.path}: {exc}") from exc
        self._local.conn = conn
        return conn

    @contextmanager
    def _transaction(self, mode: str = "DEFERRED") -> Iterator[sqlite3.Connection]:
        """Run a block in one transaction; translate SQLite failures into StoreUnavailableError."""
        conn = self._connect()
        try:
            conn.execute(f"BEGIN {mode}")
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"sqlite {self.path}: {exc}") from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.ProgrammingError) as exc:
            self._rollback(conn)
            raise ValueError(f"invalid row for sqlite online store: {exc}") from exc
        except sqlite3.Error as exc:
            self._rollback(conn)
            raise StoreUnavailableError(f"sqlite {self.path}: {exc}") from exc
        except BaseException:
            self._rollback(conn)
            raise

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                logger.exception("rollback failed")

    # --- helpers -----------------------------------------------------------------------

    @staticmethod
    def _slot_info(conn: sqlite3.Connection, slot: str) -> SlotInfo:
        row = conn.execute(
            "SELECT model_version, snapshot_id, state, written_at, row_counts, checksums FROM slots WHERE slot = ?",
            (slot,),
        ).fetchone()
        if row is None:
            return SlotInfo(slot=slot)
        return SlotInfo(
            slot=slot,
            model_version=row[0],
            snapshot_id=row[1],
            state=row[2],
            written_at=row[3],
            row_counts=json.loads(row[4]),
            checksums=json.loads(row[5]),
        )

    @staticmethod
    def _pointer(conn: sqlite3.Connection) -> Pointer | None:
        row = conn.execute(
            "SELECT active_slot, model_version, snapshot_id, deployed_at FROM pointer WHERE id = 1"
        ).fetchone()
        return None if row is None else Pointer(*row)

    @staticmethod
    def _get(conn: sqlite3.Connection, slot: str, namespace: str, keys: Sequence[str]) -> dict[str, str | None]:
        found: dict[str, str | None] = dict.fromkeys(keys)
        unique = list(found)
        for start in range(0, len(unique), _MAX_KEYS_PER_QUERY):
            chunk = unique[start : start + _MAX_KEYS_PER_QUERY]
            marks = ",".join("?" * len(chunk))
            cursor = conn.execute(
                f"SELECT key, value FROM kv WHERE slot = ? AND ns = ? AND key IN ({marks})",
                (slot, namespace, *chunk),
            )
            found.update(cursor.fetchall())
        return found

    def _read_from(
        self,
        conn: sqlite3.Connection,
        slot: str,
        namespace: str,
        keys: Sequence[str],
        extra: Mapping[str, Sequence[str]] | None,
    ) -> tuple[dict[str, str | None], dict[str, dict[str, str | None]]]:
        values = self._get(conn, slot, validate_namespace(namespace), keys)
        extra_values = {ns: self._get(conn, slot, validate_namespace(ns), ks) for ns, ks in (extra or {}).items()}
        return values, extra_values

    # --- interface ---------------------------------------------------------------------

    def prepare_slot(self, slot: str, model_version: str, snapshot_id: str) -> SlotInfo:
        """Wipe `slot` and bind it to (model_version, snapshot_id), state "writing"."""
        validate_slot(slot)
        with self._transaction("IMMEDIATE") as conn:
            pointer = self._pointer(conn)
            if pointer is not None and pointer.active_slot == slot:
                raise SlotStateError(f"slot {slot!r} is active (model {pointer.model_version}); refusing to wipe it")
            conn.execute("DELETE FROM kv WHERE slot = ?", (slot,))
            conn.execute(
                "INSERT OR REPLACE INTO slots (slot, model_version, snapshot_id, state, written_at) "
                "VALUES (?, ?, ?, 'writing', ?)",
                (slot, model_version, snapshot_id, _now()),
            )
            info = self._slot_info(conn, slot)
        logger.info("prepared slot %s for model %s snapshot %s", slot, model_version, snapshot_id)
        return info

    def write_batch(self, slot: str, namespace: str, rows: Mapping[str, str], model_version: str) -> int:
        """Upsert `rows` in one transaction; StaleWriteError if the slot is bound to another version."""
        validate_slot(slot)
        validate_namespace(namespace)
        with self._transaction("IMMEDIATE") as conn:
            info = self._slot_info(conn, slot)
            if info.state == "empty" or info.model_version != model_version:
                raise StaleWriteError(
                    f"slot {slot!r} is bound to model {info.model_version!r} ({info.state}); "
                    f"refusing a write computed with model {model_version!r}"
                )
            before = conn.total_changes
            conn.executemany(
                "INSERT OR REPLACE INTO kv (slot, ns, key, value) VALUES (?, ?, ?, ?)",
                ((slot, namespace, key, check_row(key, value)) for key, value in rows.items()),
            )
            written = conn.total_changes - before
        return written

    def seal_slot(self, slot: str) -> SlotInfo:
        """Compute row counts and checksums per namespace and mark the slot "ready"."""
        validate_slot(slot)
        with self._transaction("IMMEDIATE") as conn:
            info = self._slot_info(conn, slot)
            if info.state == "empty":
                raise SlotStateError(f"slot {slot!r} is empty; prepare it before sealing")
            namespaces = [r[0] for r in conn.execute("SELECT DISTINCT ns FROM kv WHERE slot = ?", (slot,))]
            counts: dict[str, int] = {}
            checksums: dict[str, str] = {}
            for ns in sorted(namespaces):
                rows = conn.execute("SELECT key, value FROM kv WHERE slot = ? AND ns = ?", (slot, ns))
                counts[ns], checksums[ns] = namespace_checksum(rows)
            conn.execute(
                "UPDATE slots SET state = 'ready', written_at = ?, row_counts = ?, checksums = ? WHERE slot = ?",
                (_now(), json.dumps(counts), json.dumps(checksums), slot),
            )
            info = self._slot_info(conn, slot)
        logger.info("sealed slot %s: %s", slot, counts)
        return info

    def read(
        self, namespace: str, keys: Sequence[str], *, extra: Mapping[str, Sequence[str]] | None = None
    ) -> ReadResult:
        """Resolve the pointer and read everything from that slot in one read transaction."""
        for ns in (namespace, *(extra or ())):
            validate_namespace(ns)
        wanted = [(namespace, k) for k in keys] + [(ns, k) for ns, ks in (extra or {}).items() for k in ks]
        if len(wanted) <= _MAX_KEYS_PER_STATEMENT:
            return self._read_one_statement(namespace, keys, extra or {}, wanted)
        with self._transaction() as conn:
            pointer = self._pointer(conn)
            if pointer is None:
                raise NothingDeployedError("no slot is active (nothing deployed yet)")
            values, extra_values = self._read_from(conn, pointer.active_slot, namespace, keys, extra)
        return ReadResult(
            slot=pointer.active_slot,
            model_version=pointer.model_version,
            snapshot_id=pointer.snapshot_id,
            values=values,
            extra_values=extra_values,
            deployed_at=pointer.deployed_at,
        )

    def _read_one_statement(
        self,
        namespace: str,
        keys: Sequence[str],
        extra: Mapping[str, Sequence[str]],
        wanted: list[tuple[str, str]],
    ) -> ReadResult:
        """A few keys read with the pointer in one SELECT (one subquery per key): a single statement is one
        snapshot, so this needs no BEGIN/COMMIT. The request path's read (a user's list and features) takes one
        statement instead of five, ~30 us less per request."""
        lookup = ", (SELECT value FROM kv WHERE slot = p.active_slot AND ns = ? AND key = ?)"
        head = "SELECT p.active_slot, p.model_version, p.snapshot_id, p.deployed_at"
        sql = f"{head}{lookup * len(wanted)} FROM pointer p WHERE id = 1"
        conn = self._connect()
        try:  # fetchall, not fetchone: the statement runs to its end, so its read snapshot ends with it
            rows = conn.execute(sql, [x for pair in wanted for x in pair]).fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"sqlite {self.path}: {exc}") from exc
        if not rows:
            raise NothingDeployedError("no slot is active (nothing deployed yet)")
        row = rows[0]
        found = dict(zip(wanted, row[4:], strict=True))
        return ReadResult(
            slot=row[0],
            model_version=row[1],
            snapshot_id=row[2],
            values={k: found[(namespace, k)] for k in keys},
            extra_values={ns: {k: found[(ns, k)] for k in ks} for ns, ks in extra.items()},
            deployed_at=row[3],
        )

    def read_slot(
        self,
        slot: str,
        namespace: str,
        keys: Sequence[str],
        *,
        extra: Mapping[str, Sequence[str]] | None = None,
    ) -> ReadResult:
        """Read keys from `slot` regardless of the pointer."""
        validate_slot(slot)
        with self._transaction() as conn:
            info = self._slot_info(conn, slot)
            values, extra_values = self._read_from(conn, slot, namespace, keys, extra)
        return ReadResult(
            slot=slot,
            model_version=info.model_version or "",
            snapshot_id=info.snapshot_id or "",
            values=values,
            extra_values=extra_values,
        )

    def flip(self, slot: str, expected_model_version: str) -> Pointer:
        """Point reads at a "ready" slot bound to `expected_model_version`, atomically."""
        validate_slot(slot)
        with self._transaction("IMMEDIATE") as conn:
            info = self._slot_info(conn, slot)
            if info.state != "ready" or info.model_version != expected_model_version:
                raise SlotStateError(
                    f"cannot flip to slot {slot!r}: it is {info.state} with model {info.model_version!r}, "
                    f"expected ready with model {expected_model_version!r}"
                )
            pointer = Pointer(slot, expected_model_version, info.snapshot_id or "", _now())
            conn.execute(
                "INSERT OR REPLACE INTO pointer (id, active_slot, model_version, snapshot_id, deployed_at) "
                "VALUES (1, ?, ?, ?, ?)",
                (pointer.active_slot, pointer.model_version, pointer.snapshot_id, pointer.deployed_at),
            )
        logger.info("flipped pointer to slot %s (model %s)", slot, expected_model_version)
        return pointer

    def pointer(self) -> Pointer | None:
        """The current pointer, or None if nothing was ever deployed."""
        with self._transaction() as conn:
            return self._pointer(conn)

    def slot_info(self, slot: str) -> SlotInfo:
        """The binding of one slot."""
        validate_slot(slot)
        with self._transaction() as conn:
            return self._slot_info(conn, slot)

    def describe(self) -> dict:
        """Pointer and both slots' bindings, read in one snapshot."""
        with self._transaction() as conn:
            pointer = self._pointer(conn)
            slots = {slot: self._slot_info(conn, slot).as_dict() for slot in SLOTS}
        return {
            "backend": "sqlite",
            "pointer": None if pointer is None else pointer.__dict__.copy(),
            "slots": slots,
        }

    def forget_keys(self, namespaces: Sequence[str], keys: Sequence[str]) -> int:
        """Delete `keys` of `namespaces` from both slots in one transaction."""
        if not keys or not namespaces:
            return 0
        ns_marks, key_marks = ",".join("?" * len(namespaces)), ",".join("?" * len(keys))
        with self._transaction("IMMEDIATE") as conn:
            cur = conn.execute(
                f"DELETE FROM kv WHERE ns IN ({ns_marks}) AND key IN ({key_marks})", [*namespaces, *keys]
            )
            return cur.rowcount

    def close(self) -> None:
        """Close every connection opened by any thread."""
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()
