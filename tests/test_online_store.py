"""Contract tests of the two-slot online store, run against SQLite and Redis."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping

import pytest

from recsys_platform.serve.online_store import (
    NothingDeployedError,
    OnlineStore,
    SlotStateError,
    StaleWriteError,
    StoreUnavailableError,
    open_online_store,
)
from recsys_platform.serve.online_store.base import namespace_checksum


def rows(tag: str, n: int) -> dict[str, str]:
    return {f"k{i}": json.dumps({"tag": tag, "i": i}) for i in range(n)}


def ready_slot(store: OnlineStore, slot: str, version: str, data: Mapping[str, Mapping[str, str]]) -> None:
    store.prepare_slot(slot, version, f"snap-{version}")
    for ns, batch in data.items():
        store.write_batch(slot, ns, batch, version)
    store.seal_slot(slot)


def test_empty_store_has_no_pointer_and_refuses_reads(store: OnlineStore) -> None:
    assert store.pointer() is None
    described = store.describe()
    assert described["pointer"] is None
    assert {s["state"] for s in described["slots"].values()} == {"empty"}
    with pytest.raises(NothingDeployedError, match="nothing deployed"):
        store.read("recs", ["k0"])


def test_prepare_write_seal_flip_read_roundtrip(store: OnlineStore) -> None:
    data = {"recs": rows("v1", 25), "popular": {"__global__": '{"items": []}'}}
    store.prepare_slot("blue", "v1", "snap-1")
    assert store.slot_info("blue").state == "writing"
    assert store.write_batch("blue", "recs", data["recs"], "v1") == 25
    store.write_batch("blue", "popular", data["popular"], "v1")
    info = store.seal_slot("blue")
    assert info.state == "ready"
    assert info.row_counts == {"popular": 1, "recs": 25}
    assert info.checksums["recs"] == namespace_checksum(data["recs"].items())[1]
    pointer = store.flip("blue", "v1")
    assert (pointer.active_slot, pointer.model_version, pointer.snapshot_id) == ("blue", "v1", "snap-1")
    assert store.pointer() == pointer

    result = store.read("recs", ["k3", "missing"], extra={"popular": ["__global__", "seg"]})
    assert (result.slot, result.model_version, result.snapshot_id) == ("blue", "v1", "snap-1")
    assert result.values == {"k3": data["recs"]["k3"], "missing": None}
    assert result.extra_values == {"popular": {"__global__": '{"items": []}', "seg": None}}
    assert result.deployed_at == pointer.deployed_at

    described = store.describe()
    assert described["pointer"]["active_slot"] == "blue"
    assert described["slots"]["blue"]["row_counts"] == {"popular": 1, "recs": 25}
    assert described["slots"]["green"]["state"] == "empty"


def test_a_read_of_thousands_of_keys_returns_each_value_in_order(store: OnlineStore) -> None:
    """More keys than one HMGET takes (Redis reads them in chunks of 1,000), across namespaces, with gaps."""
    data = rows("v1", 2500)
    store.prepare_slot("blue", "v1", "snap-1")
    store.write_batch("blue", "recs", data, "v1")
    store.write_batch("blue", "user_features", {"k7": "{}"}, "v1")
    store.seal_slot("blue")
    store.flip("blue", "v1")
    keys = [f"k{i}" for i in range(2600, -1, -1)]  # 100 unknown keys first, then every key newest first
    for result in (
        store.read("recs", keys, extra={"user_features": ["k7", "k8"], "popular": []}),
        store.read_slot("blue", "recs", keys),
    ):
        assert list(result.values) == keys
        assert result.values == {k: data.get(k) for k in keys}
        assert sum(v is not None for v in result.values.values()) == 2500
    assert result.extra_values == {}
    assert store.read("recs", keys[:1], extra={"user_features": ["k7", "k8"], "popular": []}).extra_values == {
        "user_features": {"k7": "{}", "k8": None},
        "popular": {},
    }


def test_checksum_is_backend_independent_and_order_independent(store: OnlineStore) -> None:
    data = rows("v1", 10)
    ready_slot(store, "blue", "v1", {"recs": dict(reversed(list(data.items())))})
    expected_count, expected = namespace_checksum(sorted(data.items()))
    assert store.slot_info("blue").row_counts["recs"] == expected_count == 10
    assert store.slot_info("blue").checksums["recs"] == expected


def test_flip_keeps_the_other_slot_and_reads_follow_the_pointer(store: OnlineStore) -> None:
    ready_slot(store, "blue", "v1", {"recs": rows("v1", 5)})
    store.flip("blue", "v1")
    ready_slot(store, "green", "v2", {"recs": rows("v2", 5)})
    store.flip("green", "v2")
    assert json.loads(store.read("recs", ["k1"]).values["k1"])["tag"] == "v2"
    assert json.loads(store.read_slot("blue", "recs", ["k1"]).values["k1"])["tag"] == "v1"
    store.flip("blue", "v1")
    result = store.read("recs", ["k1"])
    assert (result.slot, result.model_version, json.loads(result.values["k1"])["tag"]) == ("blue", "v1", "v1")


def test_prepare_refuses_the_active_slot_and_wipes_the_standby(store: OnlineStore) -> None:
    ready_slot(store, "blue", "v1", {"recs": rows("v1", 5)})
    store.flip("blue", "v1")
    with pytest.raises(SlotStateError, match="active"):
        store.prepare_slot("blue", "v2", "snap-2")
    ready_slot(store, "green", "v2", {"recs": rows("v2", 5), "items": rows("v2", 3)})
    store.prepare_slot("green", "v3", "snap-3")
    assert store.read_slot("green", "recs", ["k1"]).values == {"k1": None}
    assert store.seal_slot("green").row_counts == {}
    assert store.read("recs", ["k1"]).model_version == "v1"


def test_stale_writes_are_refused(store: OnlineStore) -> None:
    with pytest.raises(StaleWriteError, match="empty"):
        store.write_batch("blue", "recs", {"a": "1"}, "v1")
    store.prepare_slot("blue", "v1", "snap-1")
    with pytest.raises(StaleWriteError, match="bound to model 'v1'"):
        store.write_batch("blue", "recs", {"a": "1"}, "v0")
    assert store.read_slot("blue", "recs", ["a"]).values == {"a": None}


def test_flip_requires_a_ready_slot_of_the_expected_version(store: OnlineStore) -> None:
    ready_slot(store, "blue", "v1", {"recs": rows("v1", 2)})
    store.flip("blue", "v1")
    store.prepare_slot("green", "v2", "snap-2")
    store.write_batch("green", "recs", rows("v2", 2), "v2")
    with pytest.raises(SlotStateError, match="writing"):
        store.flip("green", "v2")
    store.seal_slot("green")
    with pytest.raises(SlotStateError, match="expected ready with model 'v9'"):
        store.flip("green", "v9")
    assert store.pointer().active_slot == "blue"


class FailingRows(Mapping[str, str]):
    """Rows whose iteration fails half-way, as a crashing producer would."""

    def __init__(self, data: dict[str, str], fail_after: int) -> None:
        self.data, self.fail_after = data, fail_after

    def __getitem__(self, key: str) -> str:
        return self.data[key]

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self) -> Iterator[str]:
        for n, key in enumerate(self.data):
            if n == self.fail_after:
                raise RuntimeError("producer crashed")
            yield key


def test_a_failing_batch_is_never_partially_visible(store: OnlineStore) -> None:
    store.prepare_slot("blue", "v1", "snap-1")
    data = rows("v1", 1000)
    with pytest.raises(RuntimeError, match="producer crashed"):
        store.write_batch("blue", "recs", FailingRows(data, fail_after=500), "v1")
    bad = dict(data)
    bad["k999"] = None  # type: ignore[assignment]
    with pytest.raises(TypeError, match="str -> str"):
        store.write_batch("blue", "recs", bad, "v1")
    assert set(store.read_slot("blue", "recs", list(data)).values.values()) == {None}
    assert store.seal_slot("blue").row_counts == {}


def test_concurrent_reader_sees_a_batch_all_or_nothing(store: OnlineStore) -> None:
    ready_slot(store, "blue", "v1", {"recs": {"seed": "{}"}})
    store.flip("blue", "v1")
    data = rows("v1", 20_000)
    first, last = "k0", "k19999"
    seen: list[tuple[bool, bool]] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            values = store.read("recs", [first, last]).values
            seen.append((values[first] is not None, values[last] is not None))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for start in range(0, 20_000, 10_000):
            batch = dict(list(data.items())[start : start + 10_000])
            batch[first], batch[last] = data[first], data[last]
            store.write_batch("blue", "recs", batch, "v1")
    finally:
        stop.set()
        thread.join()
    assert seen, "the reader never ran"
    assert all(a == b for a, b in seen), [s for s in seen if s[0] != s[1]][:3]


def test_sqlite_outage_raises_store_unavailable(tmp_path) -> None:
    store = open_online_store(f"sqlite:///{tmp_path}/missing-dir/store.sqlite")
    with pytest.raises(StoreUnavailableError, match="unable to open database file"):
        store.pointer()
    not_a_db = tmp_path / "garbage.sqlite"
    not_a_db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreUnavailableError, match="not a database"):
        open_online_store(f"sqlite:///{not_a_db}").read("recs", ["u1"])


def test_redis_outage_raises_store_unavailable() -> None:
    store = open_online_store("redis://127.0.0.1:1/0")
    with pytest.raises(StoreUnavailableError, match="redis at 127.0.0.1:1"):
        store.read("recs", ["u1"])
    with pytest.raises(StoreUnavailableError):
        store.prepare_slot("blue", "v1", "s")


def test_unsupported_url_and_bad_arguments_are_rejected(tmp_path) -> None:
    with pytest.raises(ValueError, match="unsupported online store URL"):
        open_online_store("postgres://localhost/x")
    store = open_online_store(f"sqlite:///{tmp_path}/s.sqlite")
    with pytest.raises(ValueError, match="unknown slot"):
        store.prepare_slot("red", "v1", "s")
    with pytest.raises(ValueError, match="invalid namespace"):
        store.read("Recs; DROP TABLE kv", ["u"])
