"""The live event simulator: valid events for known users and items, unique ids, delivery to the landing zone."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recsys_platform.dev.simulator import EventStream, landing_sender, run_simulation
from recsys_platform.ingest.landing import LocalLandingZone
from recsys_platform.realtime.collector import EventCollector
from recsys_platform.serve.events_api import EventIn

ITEMS = pl.DataFrame(
    {
        "item_id": ["i1", "i2", "i3"],
        "content_type": ["sleep_story", "movement", "music"],
        "duration_seconds": [600, 900, 300],
    }
)


def test_stream_is_valid_reproducible_and_uniquely_identified(tmp_path: Path) -> None:
    a, b = EventStream(["u1", "u2"], ITEMS, seed=3), EventStream(["u1", "u2"], ITEMS, seed=3)
    batch_a, batch_b = a.batch(200), b.batch(200)
    strip = [{k: v for k, v in r.items() if k not in ("event_id", "event_time")} for r in batch_a]
    assert strip == [{k: v for k, v in r.items() if k not in ("event_id", "event_time")} for r in batch_b]
    assert len({r["event_id"] for r in batch_a + batch_b}) == 400  # ids never collide across streams
    collector = EventCollector(LocalLandingZone(tmp_path), known_items=lambda: {"i1", "i2", "i3"})
    _, results = collector.prepare([EventIn.model_validate(r).model_dump() for r in batch_a])
    assert all(r.accepted for r in results)
    kinds = {r["event_type"] for r in batch_a}
    assert {"content_start", "search", "biometric"} <= kinds
    completes = [r for r in batch_a if r["event_type"] == "content_complete"]
    assert all(r["seconds_listened"] == {"i1": 600, "i2": 900, "i3": 300}[r["item_id"]] for r in completes)


def test_run_simulation_delivers_batches_into_the_landing_zone(tmp_path: Path) -> None:
    zone = LocalLandingZone(tmp_path)
    stream = EventStream(["u1", "u2", "u3"], ITEMS, seed=1)
    stats = run_simulation(stream, landing_sender(EventCollector(zone)), rate=20, duration=2.5)
    files = zone.list_files("events/")
    assert stats.batches == len(files) >= 2 and stats.errors == 0 and stats.rejected == 0
    landed = pl.concat([pl.read_parquet(zone.read_bytes(f.key)) for f in files])
    assert landed.height == stats.sent == stats.accepted > 0
    assert set(landed["user_id"]) <= {"u1", "u2", "u3"}
