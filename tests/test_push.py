"""Push delivery: queue semantics on SQLite and Redis, worker and senders, selection rules, the Dagster asset."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest

from recsys_platform import schemas
from recsys_platform.push import PushMessage, PushQueue, open_push_queue
from recsys_platform.push.selection import (
    TRIGGER_NIGHT_SLEEP_SEARCH,
    TRIGGER_SESSION_COMPLETED,
    TRIGGER_TOP_CHANGED,
    PushRules,
    schedule_pushes,
    select_push_users,
)
from recsys_platform.push.worker import DeliveryError, FileSender, WebhookSender, run_worker
from recsys_platform.serve import deployment
from recsys_platform.serve.online_store import open_online_store

ROOT = Path(__file__).resolve().parent.parent
AS_OF = datetime(2026, 10, 1, 22, 0, tzinfo=UTC)


def message(i: int, user: str | None = None) -> PushMessage:
    """A message for user u{i} and item i{i}, deduplicated per user and day."""
    user = user or f"u{i}"
    return PushMessage(user_id=user, item_id=f"i{i}", reason=f"reason {i}", dedup_key=f"push:{user}:2026-10-01")


@pytest.fixture(params=["sqlite", "redis"])
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty queue of each backend (Redis: a unique key prefix, dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/push.sqlite"
        return
    url = f"{request.getfixturevalue('redis_url')}?prefix=test-push-{uuid.uuid4().hex[:12]}"
    yield url
    with open_push_queue(url) as q:
        q.drop()


@pytest.fixture
def open_queue(queue_url: str) -> Iterator[Callable[..., PushQueue]]:
    """Open (and later close) consumers of the test queue; short visibility timeout by default."""
    opened: list[PushQueue] = []

    def _open(visibility_timeout_s: float = 1.0, max_attempts: int = 5) -> PushQueue:
        q = open_push_queue(queue_url, visibility_timeout_s=visibility_timeout_s, max_attempts=max_attempts)
        opened.append(q)
        return q

    yield _open
    for q in opened:
        q.close()


def run_python(code: str, *args: str) -> subprocess.Popen:
    """Start a Python child process running `code` with the repo on its path."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )


# --- queue semantics --------------------------------------------------------------------


def test_enqueue_receive_ack_in_order(open_queue) -> None:
    q = open_queue()
    assert q.enqueue_many([message(i) for i in range(3)]) == [True, True, True]
    first = q.receive("a", max_messages=2)
    assert [(d.message.user_id, d.attempt, d.consumer) for d in first] == [("u0", 1, "a"), ("u1", 1, "a")]
    assert first[0].message == message(0)
    second = q.receive("a", max_messages=10)
    assert [d.message.user_id for d in second] == ["u2"]
    assert q.stats().as_dict() == {"queued": 0, "in_flight": 3, "done": 0, "dead": 0}
    assert all(q.ack(d) for d in first + second)
    assert q.receive("a") == []
    assert q.stats().as_dict() == {"queued": 0, "in_flight": 0, "done": 3, "dead": 0}


def test_enqueue_is_idempotent_on_the_dedup_key(open_queue) -> None:
    q = open_queue()
    assert q.enqueue(message(1)) is True
    assert q.enqueue(message(2, user="u1")) is False  # same user and day, other item
    assert q.enqueue_many([message(3), message(3), message(1)]) == [True, False, False]
    got = q.receive("a")
    assert sorted((d.message.user_id, d.message.item_id) for d in got) == [("u1", "i1"), ("u3", "i3")]
    assert all(q.ack(d) for d in got)
    assert q.enqueue(message(1)) is False  # still deduplicated after delivery
    assert q.stats().as_dict() == {"queued": 0, "in_flight": 0, "done": 2, "dead": 0}


_CRASHING_CONSUMER = """
import os, sys
from recsys_platform.push import open_push_queue
q = open_push_queue(sys.argv[1], visibility_timeout_s=1.0)
got = q.receive("doomed", 1)
print(got[0].message_id, flush=True)
os._exit(1)  # dies holding the lease, without ack
"""


def test_message_is_redelivered_after_a_crashed_consumer(open_queue, queue_url: str) -> None:
    q = open_queue(visibility_timeout_s=1.0)
    q.enqueue(message(7))
    child = run_python(_CRASHING_CONSUMER, queue_url)
    crashed_id = child.stdout.read().strip()
    assert child.wait(timeout=30) == 1 and crashed_id
    assert q.receive("survivor") == []  # still leased to the dead consumer
    time.sleep(1.2)
    (again,) = q.receive("survivor")
    assert (again.message_id, again.message.user_id, again.attempt) == (crashed_id, "u7", 2)
    assert q.ack(again)
    assert q.stats().as_dict() == {"queued": 0, "in_flight": 0, "done": 1, "dead": 0}


def test_expired_lease_cannot_be_acked_by_its_old_owner(open_queue) -> None:
    slow, fast = open_queue(visibility_timeout_s=1.0), open_queue(visibility_timeout_s=1.0)
    slow.enqueue(message(1))
    (stale,) = slow.receive("slow")
    time.sleep(1.1)
    (fresh,) = fast.receive("fast")
    assert (fresh.message_id, fresh.attempt) == (stale.message_id, 2)
    assert slow.ack(stale) is False
    assert slow.nack(stale, "late") is False
    assert fast.ack(fresh) is True
    assert fast.stats().done == 1


def test_retries_then_dead_letter_after_max_attempts(open_queue) -> None:
    q = open_queue(visibility_timeout_s=1.0, max_attempts=3)
    q.enqueue(message(1))
    for attempt in (1, 2, 3):
        (d,) = q.receive("a")
        assert d.attempt == attempt
        assert q.nack(d, f"boom {attempt}", retry_after_s=0.0)
    assert q.receive("a") == []
    (dead,) = q.dead_letters()
    assert (dead.message.user_id, dead.attempts, dead.error) == ("u1", 3, "boom 3")
    assert q.stats().as_dict() == {"queued": 0, "in_flight": 0, "done": 0, "dead": 1}


def test_nack_delay_and_expired_last_lease_dead_letters(open_queue) -> None:
    q = open_queue(visibility_timeout_s=1.0, max_attempts=2)
    q.enqueue(message(1))
    (d,) = q.receive("a")
    q.nack(d, "smtp down", retry_after_s=0.6)
    assert q.receive("a") == []  # not before the retry delay
    time.sleep(0.7)
    (d2,) = q.receive("a")
    assert d2.attempt == 2
    time.sleep(1.1)  # the last attempt's lease expires without an ack
    assert q.receive("a") == []
    (dead,) = q.dead_letters()
    assert dead.attempts == 2
    assert dead.error.startswith("lease expired without ack") and "smtp down" in dead.error


_DRAINING_CONSUMER = """
import json, os, sys, time
from recsys_platform.push import open_push_queue
url, name, rendezvous = sys.argv[1:4]
q = open_push_queue(url, visibility_timeout_s=30.0)
open(os.path.join(rendezvous, "ready-" + name), "w").close()
while not os.path.exists(os.path.join(rendezvous, "go")):
    time.sleep(0.01)
got, empty = [], 0
while empty < 3:
    batch = q.receive(name, 7)
    empty = 0 if batch else empty + 1
    for d in batch:
        got.append(d.message_id)
        time.sleep(0.001)
        assert q.ack(d), d.message_id
print(json.dumps(got))
"""


def test_concurrent_consumer_processes_never_share_a_message(open_queue, queue_url: str, tmp_path: Path) -> None:
    q = open_queue(visibility_timeout_s=30.0)
    assert all(q.enqueue_many([message(i) for i in range(300)]))
    names = [f"c{i}" for i in range(4)]
    children = [run_python(_DRAINING_CONSUMER, queue_url, name, str(tmp_path)) for name in names]
    deadline = time.monotonic() + 30
    while not all((tmp_path / f"ready-{n}").exists() for n in names) and time.monotonic() < deadline:
        time.sleep(0.02)
    (tmp_path / "go").touch()
    results = [json.loads(child.communicate(timeout=60)[0]) for child in children]
    assert all(child.returncode == 0 for child in children)
    received = [mid for got in results for mid in got]
    assert len(received) == 300 and len(set(received)) == 300
    assert sum(1 for got in results if got) >= 2  # they really competed
    assert q.stats().as_dict() == {"queued": 0, "in_flight": 0, "done": 300, "dead": 0}


def test_unsupported_url_is_rejected() -> None:
    with pytest.raises(ValueError, match="unsupported push queue URL"):
        open_push_queue("kafka://broker:9092")


# --- worker and senders -------------------------------------------------------------------


class Webhook:
    """A loopback HTTP server that records POSTs and answers 500 to the first `failures` of them."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.posts: list[tuple[int, str, dict]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = 500 if hook.failures > 0 else 200
                hook.failures -= 1
                hook.posts.append((status, self.headers.get("Idempotency-Key"), body))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok" if status == 200 else b"no")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/push"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Callable[[int], Webhook]]:
    started: list[Webhook] = []

    def _start(failures: int = 0) -> Webhook:
        started.append(Webhook(failures))
        return started[-1]

    yield _start
    for hook in started:
        hook.close()


def test_worker_delivers_to_a_file(open_queue, tmp_path: Path) -> None:
    q = open_queue()
    q.enqueue_many([message(i) for i in range(5)])
    sender = FileSender(tmp_path / "out" / "push.jsonl")
    outcomes: list[str] = []
    stats = run_worker(q, sender, "w1", stop_after=5, poll_interval=0.05, on_delivery=lambda d, o: outcomes.append(o))
    sender.close()
    lines = [json.loads(line) for line in (tmp_path / "out" / "push.jsonl").read_text().splitlines()]
    assert [(r["user_id"], r["item_id"], r["dedup_key"]) for r in lines] == [
        (f"u{i}", f"i{i}", f"push:u{i}:2026-10-01") for i in range(5)
    ]
    assert all("sent_at" in r for r in lines)
    assert (stats.sent, stats.failed, outcomes) == (5, 0, ["sent"] * 5)
    assert q.stats().as_dict() == {"queued": 0, "in_flight": 0, "done": 5, "dead": 0}


def test_webhook_failures_are_retried_until_delivered(open_queue, webhook) -> None:
    hook = webhook(failures=2)
    q = open_queue(max_attempts=5)
    q.enqueue_many([message(1), message(2)])
    sender = WebhookSender(hook.url, timeout=2.0)
    stats = run_worker(q, sender, "w1", stop_after=4, poll_interval=0.05, retry_backoff_s=0.0, idle_timeout_s=5)
    sender.close()
    assert (stats.sent, stats.failed) == (2, 2)
    assert [status for status, _, _ in hook.posts] == [500, 500, 200, 200]
    delivered = {key: body["item_id"] for status, key, body in hook.posts if status == 200}
    assert delivered == {"push:u1:2026-10-01": "i1", "push:u2:2026-10-01": "i2"}
    assert q.stats().as_dict() == {"queued": 0, "in_flight": 0, "done": 2, "dead": 0}


def test_webhook_that_always_fails_dead_letters_with_its_error(open_queue, webhook) -> None:
    hook = webhook(failures=10**6)
    q = open_queue(max_attempts=3)
    q.enqueue(message(1))
    sender = WebhookSender(hook.url, timeout=2.0)
    with pytest.raises(DeliveryError, match="answered 500"):
        sender.send(message(9))
    stats = run_worker(q, sender, "w1", stop_after=3, poll_interval=0.05, retry_backoff_s=0.0)
    sender.close()
    assert (stats.sent, stats.failed, stats.dead_lettered) == (0, 3, 1)
    (dead,) = q.dead_letters()
    assert dead.attempts == 3 and "answered 500" in dead.error
    assert q.stats().dead == 1


# --- selection --------------------------------------------------------------------------------


def _event(user: str, etype: str, at: datetime, item: str | None) -> dict:
    return {"event_id": uuid.uuid4().hex, "user_id": user, "event_type": etype, "event_time": at, "item_id": item}


def synthetic_tables() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Events, users and items around AS_OF (22:00 UTC) covering every trigger rule."""
    m = lambda minutes: AS_OF - timedelta(minutes=minutes)  # noqa: E731
    rows = [
        ("u_done", "content_complete", m(10), "i1", None),  # completed a session 10 min ago
        ("u_night", "search", m(20), None, "sleep story bedtime"),  # 22:40 local (UTC+1)
        ("u_night2", "search", m(30), None, "rain sounds sleep"),  # 02:30 local next day (UTC+5)
        ("u_day", "search", m(20), None, "sleep"),  # 12:40 local (UTC-9): daytime
        ("u_yoga", "search", m(15), None, "yoga stretch"),  # night, but not about sleep
        ("u_old", "content_complete", m(120), "i2", None),  # too long ago
        ("u_future", "content_complete", m(-5), "i2", None),  # after as_of
        ("u_both", "content_complete", m(30), "i1", None),
        ("u_both", "search", m(5), None, "cant sleep"),  # the latest trigger wins
        ("u_exhausted", "content_complete", m(3), "i1", None),  # only recommendation is i1
        ("u_done", "content_start", m(12), "i1", None),
    ]
    events = schemas.conform(
        pl.DataFrame(
            [{**_event(u, t, at, item), "query": q} for u, t, at, item, q in rows],
            schema_overrides={"event_time": pl.Datetime("us", "UTC")},
        ),
        schemas.EVENT_SCHEMA,
    )
    offsets = {"u_night": 1, "u_night2": 5, "u_day": -9, "u_both": 0}
    names = ["u_done", "u_night", "u_night2", "u_day", "u_yoga", "u_old", "u_future", "u_both", "u_exhausted"]
    users = schemas.conform(
        pl.DataFrame({"user_id": names, "utc_offset_hours": [offsets.get(u, 0) for u in names]}), schemas.USER_SCHEMA
    )
    catalog = [
        ("i1", "Evening Wind-Down", "meditation"),
        ("i2", "Morning Focus", "focus"),
        ("s1", "The Sleepy Train", "sleep_story"),
        ("m1", "Gentle Yoga", "movement"),
        ("r1", "Rain on Leaves", "soundscape"),
    ]
    items = schemas.conform(
        pl.DataFrame({"item_id": [c[0] for c in catalog], "title": [c[1] for c in catalog]}).with_columns(
            content_type=pl.Series([c[2] for c in catalog]), is_kids=pl.lit(False)
        ),
        schemas.ITEM_SCHEMA,
    )
    return events, users, items


def deploy_store(url: str, items: pl.DataFrame) -> None:
    """Deploy model v1 with personal lists for some users and a global popularity list."""
    types = dict(items.select("item_id", "content_type").iter_rows())

    def ranked(ids: list[str]) -> str:
        entries = [
            {"item_id": i, "score": 10.0 - r, "content_type": types[i], "is_kids": False} for r, i in enumerate(ids)
        ]
        return json.dumps({"items": entries, "generated_at": "2026-10-01T21:00:00+00:00"})

    recs = {
        "u_done": ranked(["i1", "i2", "s1"]),
        "u_night": ranked(["m1", "i2", "s1"]),
        "u_night2": ranked(["r1", "s1"]),
        "u_exhausted": ranked(["i1"]),
    }
    payload = {
        "recs": recs,
        "user_features": {u: json.dumps({"segment": "en:beginner"}) for u in recs},
        "popular": {"__global__": ranked(["i1", "m1", "r1"])},
        "items": {i: json.dumps({"title": t}) for i, t in items.select("item_id", "title").iter_rows()},
    }
    with open_online_store(url) as store:
        deployment.deploy(store, "v1", "snap-1", payload)


def test_selection_rules() -> None:
    events, users, _ = synthetic_tables()
    chosen = select_push_users(events, users, AS_OF)
    got = {r["user_id"]: r for r in chosen.iter_rows(named=True)}
    assert sorted(got) == ["u_both", "u_done", "u_exhausted", "u_night", "u_night2"]
    assert got["u_done"]["trigger"] == TRIGGER_SESSION_COMPLETED and got["u_done"]["trigger_item_id"] == "i1"
    assert got["u_night"]["trigger"] == TRIGGER_NIGHT_SLEEP_SEARCH and got["u_night"]["query"] == "sleep story bedtime"
    assert str(got["u_night2"]["local_date"]) == "2026-10-02"  # 02:30 the next day in UTC+5
    assert got["u_both"]["trigger"] == TRIGGER_NIGHT_SLEEP_SEARCH and got["u_both"]["exclude_item_ids"] == ["i1"]


def test_schedule_pushes_enqueues_top_allowed_item_once_per_user_and_day(tmp_path: Path) -> None:
    events, users, items = synthetic_tables()
    store_url = f"sqlite:///{tmp_path}/store.sqlite"
    deploy_store(store_url, items)
    with open_online_store(store_url) as store, open_push_queue(f"sqlite:///{tmp_path}/q.sqlite") as queue:
        batch = schedule_pushes(store, queue, events, users, AS_OF, items)
        rows = {r["user_id"]: r for r in batch.frame.iter_rows(named=True)}
        assert (batch.selected_users, batch.enqueued, batch.duplicates, batch.skipped_users) == (5, 4, 0, 1)
        assert {u: r["item_id"] for u, r in rows.items()} == {
            "u_done": "i2",  # top is i1, which they just completed
            "u_night": "s1",  # a sleep item is preferred after a night sleep search
            "u_night2": "r1",
            "u_both": "r1",  # cold: popularity fallback, without the i1 they completed
        }
        assert rows["u_done"]["reason"] == "You just finished Evening Wind-Down. Keep going with Morning Focus."
        assert "sleep story bedtime" in rows["u_night"]["reason"] and "The Sleepy Train" in rows["u_night"]["reason"]
        assert rows["u_night2"]["dedup_key"] == "push:u_night2:2026-10-02"
        assert {r["model_version"] for r in rows.values()} == {"v1"}
        deliveries = queue.receive("check", 10)
        by_user = {d.message.user_id: d.message for d in deliveries}
        assert by_user["u_both"].data["source"] == "popularity_fallback" and by_user["u_done"].title == "Morning Focus"
        assert by_user["u_done"].data["trigger"] == TRIGGER_SESSION_COMPLETED
        # Later the same day u_done finishes another session: still only one push for them today.
        later = pl.concat(
            [
                events,
                events.filter(pl.col("user_id") == "u_done")
                .head(1)
                .with_columns(
                    event_id=pl.lit("late-1"), item_id=pl.lit("i2"), event_time=pl.lit(AS_OF + timedelta(minutes=20))
                ),
            ]
        )
        again = schedule_pushes(store, queue, later, users, AS_OF + timedelta(minutes=25), items)
        assert again.frame.filter(pl.col("user_id") == "u_done").select("item_id", "enqueued").row(0) == ("s1", False)
        # Only u_future (who completed a session at 22:05) is new in this window.
        assert again.frame.filter(pl.col("enqueued"))["user_id"].to_list() == ["u_future"]
        assert queue.stats().in_flight + queue.stats().queued == 5


def test_a_changed_top_recommendation_is_pushed_outside_quiet_hours_unless_opted_out(tmp_path: Path) -> None:
    """Event-driven push (the near-real-time refresh passes the users whose top recommendation it changed): a
    rule's trigger wins over top_changed, top_changed waits out the user's local quiet hours, opted-out users
    get nothing, and the per-day dedup key caps every kind at one push per user and local day."""
    events, users, items = synthetic_tables()
    changed = ["u_done", "u_day", "u_yoga"]
    got = {r["user_id"]: r for r in select_push_users(events, users, AS_OF, top_changed=changed).iter_rows(named=True)}
    assert got["u_done"]["trigger"] == TRIGGER_SESSION_COMPLETED  # the rule's reason is the more specific one
    assert got["u_day"]["trigger"] == TRIGGER_TOP_CHANGED and str(got["u_day"]["local_date"]) == "2026-10-01"
    assert "u_yoga" not in got  # 22:00 local (UTC+0): quiet hours
    no_quiet = PushRules(quiet_start_hour=0, quiet_end_hour=0)
    relaxed = select_push_users(events, users, AS_OF, no_quiet, top_changed=changed)
    assert relaxed.filter(pl.col("user_id") == "u_yoga")["trigger"].to_list() == [TRIGGER_TOP_CHANGED]
    # push_opt_out is a column of the users table (USER_SCHEMA), so it survives ingestion and import
    opted = schemas.conform(
        users.with_columns(push_opt_out=pl.col("user_id").is_in(["u_day", "u_done"])), schemas.USER_SCHEMA
    )
    assert opted["push_opt_out"].sum() == 2
    kept = select_push_users(events, opted, AS_OF, top_changed=changed)["user_id"].to_list()
    assert "u_day" not in kept and "u_done" not in kept and "u_night" in kept

    store_url = f"sqlite:///{tmp_path}/store.sqlite"
    deploy_store(store_url, items)
    with open_online_store(store_url) as store, open_push_queue(f"sqlite:///{tmp_path}/q.sqlite") as queue:
        batch = schedule_pushes(store, queue, events, users, AS_OF, items, top_changed=["u_day"])
        row = batch.frame.filter(pl.col("user_id") == "u_day").row(0, named=True)
        assert (row["trigger"], row["item_id"], row["enqueued"]) == (TRIGGER_TOP_CHANGED, "i1", True)
        assert row["reason"] == "New for you after your latest session: Evening Wind-Down."
        again = schedule_pushes(store, queue, events, users, AS_OF + timedelta(minutes=5), items, top_changed=["u_day"])
        assert again.frame.filter(pl.col("user_id") == "u_day")["enqueued"].to_list() == [False]  # one a day


# --- Dagster -------------------------------------------------------------------------------------


def test_push_notifications_asset_materializes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dagster as dg

    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    from orchestration.definitions import ASSETS
    from orchestration.environment import build_resources
    from recsys_platform.config import Settings

    settings = Settings.from_env()
    settings.ensure_local_dirs()
    events, users, items = synthetic_tables()
    events = events.filter(pl.col("event_time") <= AS_OF)  # the latest event defines "now"
    lake = Path(settings.lake_url)
    (lake / "raw_events").mkdir(parents=True)
    for key, part in events.with_columns(key=pl.col("event_time").dt.strftime("%Y-%m-%d-%H:00")).group_by("key"):
        part.drop("key").write_parquet(lake / "raw_events" / f"{key[0]}.parquet")
    users.write_parquet(lake / "users.parquet")
    items.write_parquet(lake / "items.parquet")
    deploy_store(settings.online_store_url, items)

    result = dg.materialize(ASSETS, selection=["push_notifications"], resources=build_resources(settings))
    assert result.success
    frame = result.output_for_node("push_notifications")
    assert sorted(frame["user_id"]) == ["u_both", "u_done", "u_night", "u_night2"]
    assert frame["enqueued"].all()
    meta = result.asset_materializations_for_node("push_notifications")[0].metadata
    assert meta["enqueued"].value == 4 and meta["skipped_no_recommendation"].value == 1
    assert meta["as_of"].value == (AS_OF - timedelta(minutes=3)).isoformat()
    with open_push_queue(settings.push_queue_url) as queue:
        assert queue.stats().queued == 4


def test_push_on_refresh_is_read_as_a_boolean_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from recsys_platform.config import PipelineParams

    assert PipelineParams.from_env().push_on_refresh is True
    for raw, want in (("0", False), ("off", False), ("false", False), ("1", True), ("yes", True)):
        monkeypatch.setenv("RECSYS_PUSH_ON_REFRESH", raw)
        assert PipelineParams.from_env().push_on_refresh is want, raw
    monkeypatch.setenv("RECSYS_PUSH_ON_REFRESH", "sometimes")
    with pytest.raises(ValueError, match="RECSYS_PUSH_ON_REFRESH='sometimes'"):
        PipelineParams.from_env()
