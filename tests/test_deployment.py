"""Blue-green deployment: deploy/verify/flip, rollback, near-real-time writes, reads during flips."""

from __future__ import annotations

import json
import threading
import time

import pytest

from recsys_platform.serve import deployment
from recsys_platform.serve import read_path as serving
from recsys_platform.serve.deployment import (
    DeploymentVerificationError,
    NothingToRollBackError,
    RollbackConflictError,
)
from recsys_platform.serve.online_store import OnlineStore, StaleWriteError

SEGMENTS = ("en:beginner", "de:advanced")


def ranked(version: str, prefix: str, n: int = 20) -> str:
    """A stored list whose item ids carry the model version, to detect mixed responses."""
    items = [{"item_id": f"{version}|{prefix}{j}", "score": float(n - j)} for j in range(n)]
    return json.dumps({"items": items, "generated_at": "2025-01-01T00:00:00+00:00"})


def payload(version: str, n_users: int = 50) -> dict[str, dict[str, str]]:
    """recs for users u0..u{n-1}, features (with segment) for them and for cold users c0..c9."""
    users = {f"u{i}": ranked(version, f"u{i}-") for i in range(n_users)}
    features = {f"u{i}": json.dumps({"segment": SEGMENTS[i % 2]}) for i in range(n_users)}
    features |= {f"c{i}": json.dumps({"segment": SEGMENTS[i % 2]}) for i in range(10)}
    popular = {seg: ranked(version, f"pop-{seg}-") for seg in SEGMENTS} | {"__global__": ranked(version, "pop-")}
    return {
        "recs": users,
        "user_features": features,
        "popular": popular,
        "similar": {"i1": ranked(version, "s")},
    }


def test_deploy_writes_standby_verifies_and_flips(store: OnlineStore) -> None:
    first = deployment.deploy(store, "v1", "snap-1", payload("v1"), batch_size=7)
    assert (first.slot, first.noop, first.previous) == ("blue", False, None)
    assert first.row_counts == {"popular": 3, "recs": 50, "similar": 1, "user_features": 60}
    assert first.sample_checked == 50 + 60 + 3 + 1
    second = deployment.deploy(store, "v2", "snap-2", payload("v2"))
    assert (second.slot, second.previous.model_version, second.pointer.model_version) == ("green", "v1", "v2")
    assert store.read("recs", ["u3"]).values["u3"] == payload("v2")["recs"]["u3"]
    assert store.read_slot("blue", "recs", ["u3"]).values["u3"] == payload("v1")["recs"]["u3"]
    described = deployment.status(store)
    assert described["pointer"]["model_version"] == "v2"
    assert described["rollback_available"] is True
    assert described["slots"]["blue"]["checksum"] == first.checksum


def test_redeploying_the_active_version_and_snapshot_is_a_noop(store: OnlineStore) -> None:
    first = deployment.deploy(store, "v1", "snap-1", payload("v1"))
    again = deployment.deploy(store, "v1", "snap-1", payload("v1"))
    assert again.noop is True
    assert again.pointer == first.pointer
    assert store.slot_info("green").state == "empty"


def test_failed_sample_parity_leaves_the_pointer_unchanged(store: OnlineStore) -> None:
    deployment.deploy(store, "v1", "snap-1", payload("v1"))
    before = store.pointer()
    offline = {"recs": {"u1": ranked("v2", "u1-"), "u2": ranked("OTHER", "u2-")}}
    with pytest.raises(DeploymentVerificationError, match=r"recs\['u2'\]: stored") as caught:
        deployment.deploy(store, "v2", "snap-2", payload("v2"), offline_sample=offline)
    assert len(caught.value.problems) == 1
    assert store.pointer() == before
    assert store.read("recs", ["u1"]).values["u1"] == payload("v1")["recs"]["u1"]


class LossyStore:
    """Delegates to a store but silently drops one row per batch, like a buggy backend."""

    def __init__(self, inner: OnlineStore) -> None:
        self.inner = inner

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def write_batch(self, slot, namespace, rows, model_version):
        kept = dict(list(rows.items())[:-1])
        return self.inner.write_batch(slot, namespace, kept, model_version)


def test_row_count_mismatch_fails_verification(store: OnlineStore) -> None:
    with pytest.raises(DeploymentVerificationError, match="recs: 49 rows stored, 50 in payload"):
        deployment.deploy(LossyStore(store), "v1", "snap-1", payload("v1"), offline_sample={})
    assert store.pointer() is None
    assert store.slot_info("blue").state == "ready"


def test_rollback_flips_back_quickly_and_can_roll_forward(store: OnlineStore) -> None:
    with pytest.raises(NothingToRollBackError, match="nothing is deployed"):
        deployment.rollback(store, to_version="v0")
    deployment.deploy(store, "v1", "snap-1", payload("v1"))
    with pytest.raises(NothingToRollBackError, match="slot 'green' is empty"):
        deployment.rollback(store, from_version="v1")
    deployment.deploy(store, "v2", "snap-2", payload("v2"))
    started = time.perf_counter()
    pointer = deployment.rollback(store, to_version="v1")
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0
    assert (pointer.active_slot, pointer.model_version, pointer.snapshot_id) == ("blue", "v1", "snap-1")
    assert serving.recommend(store, "u1", 3).items[0].item_id == "v1|u1-0"
    assert deployment.rollback(store, from_version="v1").model_version == "v2"


def test_rollback_names_its_target_so_retries_and_concurrent_calls_never_undo_each_other(store: OnlineStore) -> None:
    deployment.deploy(store, "v1", "snap-1", payload("v1"))
    deployment.deploy(store, "v2", "snap-2", payload("v2"))
    with pytest.raises(ValueError, match="name the rollback target"):
        deployment.rollback(store)
    for _ in range(3):  # a client retrying after a lost response
        assert deployment.rollback(store, to_version="v1").model_version == "v1"
    with pytest.raises(RollbackConflictError, match="serves model v1, not v2: nothing changed"):
        deployment.rollback(store, from_version="v2")
    with pytest.raises(NothingToRollBackError, match="no slot holds model v9"):
        deployment.rollback(store, to_version="v9")
    assert store.pointer().model_version == "v1"
    deployment.rollback(store, to_version="v2")
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(deployment.rollback(store, to_version="v1").model_version))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["v1"] * 8 and store.pointer().model_version == "v1"


def test_near_real_time_writes_need_the_active_version(store: OnlineStore) -> None:
    with pytest.raises(StaleWriteError, match="nothing is deployed"):
        deployment.write_user_updates(store, "v1", "recs", {"u1": ranked("v1", "x")})
    deployment.deploy(store, "v1", "snap-1", payload("v1"))
    assert deployment.write_user_updates(store, "v1", "recs", {"new-user": ranked("v1", "fresh-")}) == 1
    assert serving.recommend(store, "new-user", 2).items[0].item_id == "v1|fresh-0"
    with pytest.raises(StaleWriteError, match="serves model 'v1'; refusing rows computed with model 'v0'"):
        deployment.write_user_updates(store, "v0", "recs", {"u1": ranked("v0", "x")})
    # Writing to the standby directly with the wrong version is refused by the slot itself.
    deployment.deploy(store, "v2", "snap-2", payload("v2"))
    with pytest.raises(StaleWriteError, match="bound to model 'v1'"):
        store.write_batch("blue", "recs", {"u1": ranked("v2", "x")}, "v2")


def test_readers_never_see_mixed_versions_during_repeated_flips(store: OnlineStore) -> None:
    deployment.deploy(store, "v0", "snap-0", payload("v0", n_users=30))
    stop = threading.Event()
    problems: list[str] = []
    seen_versions: set[str] = set()
    counts = {"responses": 0}

    def reader(user_ids: list[str]) -> None:
        n = 0
        while not stop.is_set():
            user = user_ids[n % len(user_ids)]
            n += 1
            rec = serving.recommend(store, user, 5)
            seen_versions.add(rec.model_version)
            counts["responses"] += 1
            wrong = [i.item_id for i in rec.items if not i.item_id.startswith(f"{rec.model_version}|")]
            if wrong or not rec.items:
                problems.append(f"{user}: {rec.model_version} served {wrong or 'nothing'}")

    users = [f"u{i}" for i in range(30)] + [f"c{i}" for i in range(10)] * 4 + ["nobody"] * 4
    threads = [threading.Thread(target=reader, args=(users[i::3],)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        for n in range(1, 7):
            deployment.deploy(store, f"v{n}", f"snap-{n}", payload(f"v{n}", n_users=30))
            deployment.rollback(store, to_version=f"v{n - 1}")
            deployment.rollback(store, from_version=f"v{n - 1}")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert problems == []
    assert counts["responses"] > 50
    assert len(seen_versions) >= 3, seen_versions
    assert store.pointer().model_version == "v6"


class CountingRows(dict):
    """A namespace's rows that count how often they are read in full."""

    passes = 0

    def items(self):
        CountingRows.passes += 1
        return super().items()


class AlteringStore(LossyStore):
    """Delegates to a store but changes one stored value per batch, keeping every key."""

    def write_batch(self, slot, namespace, rows, model_version):
        first = next(iter(rows))
        return self.inner.write_batch(slot, namespace, {**rows, first: rows[first] + " "}, model_version)


def test_the_payload_is_read_once_and_a_changed_value_still_fails_the_checksum(store: OnlineStore) -> None:
    # the expected counts and checksums are computed as the rows are written, not in a second pass over the payload
    CountingRows.passes = 0
    rows = payload("v1")
    deployment.deploy(store, "v1", "snap-1", {ns: CountingRows(r) for ns, r in rows.items()}, offline_sample={})
    assert CountingRows.passes == len(rows)
    # what the store holds is still checked against what it was given: one value altered per batch fails
    with pytest.raises(DeploymentVerificationError, match=r"recs: checksum \w+ != payload checksum"):
        deployment.deploy(AlteringStore(store), "v2", "snap-2", payload("v2"), offline_sample={})
    assert store.pointer().model_version == "v1"
