"""Freshness: time from `POST /v1/events` accepted to the user's recommendations changing, and to their push
being delivered.

Starts the stack the way a user would, on loopback: `dagster dev` (webserver + daemon + code server,
landing sensor running) and `recsys serve`, plus `recsys simulate` for background load. Then posts
probe events (a user completes their current top item) for sampled users, one every `--interval`
seconds, and polls each user's recommendations until that item has left the list. Prints p50/p95/max
and, from the Dagster run that carried each probe, the breakdown: sensor (POST -> run created), queue
(created -> launched), run start-up (launched -> run process executing), compute per step, the
refresh's own write time, and what remains (result visible to the poller). A run created before the probe's
POST that read the probe's file when it started has a negative sensor part: a refresh covers every file landed
until its first step.

Event-driven push: `recsys push-worker` runs beside the stack with its file sender (an outbox on
loopback disk); the refresh that carries a probe queues the user's push (the completion fires the
`session_completed` rule), and the probe's push latency is the worker's `sent_at` minus the POST's
acceptance. Probe users with a push already delivered in this run are skipped (one push per user and
local day); use a fresh --home so that earlier runs' pushes do not deduplicate the probes' away. A
probe that times out counts in the percentiles as a failure (its latency is infinite).

    python benchmarks/freshness.py --home /tmp/freshness-home --events 60 --rate 5

Probes start once the refresh runs are forked from the warm run worker (warm-up events until one is); the
runs before it, right after the daemon starts, are cold. An empty home is prepared first with
`recsys quickstart --users 2000` (a few minutes). Bounded by `--max-seconds`; every process it starts is stopped
at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))

from recsys_platform.dev.production_stack import free_port, wait_http  # noqa: E402


@dataclass
class Probe:
    """One probe event and what happened to it."""

    user: str
    item: str
    key: str = ""
    accepted_wall: float = 0.0
    accepted: float = 0.0
    changed: float | None = None
    pushed_wall: float | None = None  # the push worker's sent_at for this user's push
    run: dict = field(default_factory=dict)


def _load() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def _instance(env: dict):
    import dagster as dg

    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    return dg.DagsterInstance.get()


def _refresh_runs(instance) -> list:
    from dagster._core.storage.dagster_run import RunsFilter

    return instance.get_run_records(RunsFilter(job_name="refresh_realtime"), limit=5000)


def _wait_idle(instance, seconds: float, warm_up=None, quiet_seconds: float = 30.0) -> None:
    """Wait for the sensor's first runs (the previous hour's files) to finish, so probes start warm. When no run
    has started after `quiet_seconds` (no files in the previous hour), `warm_up()` lands an event to start one: the
    first refresh after the daemon starts also starts the warm run worker."""
    import dagster as dg

    started = time.monotonic()
    deadline = started + seconds
    saw_run = False
    while time.monotonic() < deadline:
        records = _refresh_runs(instance)
        saw_run = saw_run or bool(records)
        busy = [
            r for r in records if r.dagster_run.status not in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE)
        ]
        if saw_run and not busy:
            return
        if not saw_run and warm_up is not None and time.monotonic() - started > quiet_seconds:
            warm_up()
            warm_up = None
        time.sleep(1.0)
    print(f"warning: warm-up not idle after {seconds:.0f} s; measuring anyway")


def _wait_warm(instance, seconds: float, warm_up) -> None:
    """After `_wait_idle`: until the newest refresh run was forked from the warm run worker, land an event with
    `warm_up()` every few seconds. The worker starts with the daemon's first refresh run and loads the code location
    and Great Expectations (about 20 s at load 2.5 on 2 cores); runs before that start cold, and a probe among them
    measures the daemon's start, not the refresh path."""
    warm_tag = _warm_worker_tag()
    deadline = time.monotonic() + seconds
    while warm_tag is not None and time.monotonic() < deadline:
        records = sorted(_refresh_runs(instance), key=lambda r: r.create_timestamp)
        finished = [r for r in records if r.dagster_run.is_finished]
        if finished and warm_tag in finished[-1].dagster_run.tags:
            print(f"warm: the newest refresh run was forked from the warm run worker ({len(records)} runs)")
            return
        if not records or records[-1].dagster_run.is_finished:
            warm_up()
        time.sleep(3.0)
    if warm_tag is not None:
        print(f"warning: no warm refresh run after {seconds:.0f} s; measuring anyway")


def _post_warm_up_event(base: str, home: Path, quiet: bool = False) -> None:
    """Post an `app_open` of the first user through the API (if that user is sampled as a probe later, the probe
    loop skips them only if the refresh sent them a push, as it does for the background load's users)."""
    import polars as pl

    user = pl.read_parquet(home / "lake" / "users.parquet", columns=["user_id"])["user_id"].min()
    event = {"user_id": user, "event_type": "app_open", "event_time": datetime.now(UTC).isoformat()}
    answer = httpx.post(f"{base}/v1/events", json={"records": [event]}, timeout=10).json()
    if not quiet:
        print(f"no refresh run after 30 s: posted a warm-up event ({answer['FailedRecordCount']} rejected)", flush=True)


def _run_breakdown(instance, record) -> dict:
    """Timestamps of one refresh run and the refresh step's own timings."""
    created = record.create_timestamp.timestamp()
    out: dict = {"created": created, "status": record.dagster_run.status.value}
    steps: dict[str, float] = {}
    for e in instance.all_logs(record.dagster_run.run_id):
        ev = e.dagster_event
        if ev is None:
            continue
        kind = ev.event_type_value
        if kind == "PIPELINE_STARTING":
            out["launched"] = e.timestamp
        elif kind == "PIPELINE_START":
            out["executing"] = e.timestamp
        elif kind in ("PIPELINE_SUCCESS", "PIPELINE_FAILURE"):
            out["finished"] = e.timestamp
        elif kind == "STEP_START":
            steps[f"{e.step_key}:start"] = e.timestamp
        elif kind == "STEP_SUCCESS":
            steps[f"{e.step_key}:end"] = e.timestamp
        elif kind == "ASSET_MATERIALIZATION" and e.step_key == "realtime_recommendations":
            meta = ev.event_specific_data.materialization.metadata
            if "timings" in meta:
                out["timings"] = meta["timings"].value
            for name in ("touched_users", "files_after", "last_file"):
                out[name] = meta[name].value if name in meta else None
        elif kind == "STEP_FAILURE":
            out["failed_step"] = e.step_key
    out["steps"] = {
        k.split(":")[0]: steps[k] - steps[k.replace(":end", ":start")]
        for k in steps
        if k.endswith(":end") and k.replace(":end", ":start") in steps
    }
    out["first_step"] = min((v for k, v in steps.items() if k.endswith(":start")), default=None)
    out["last_step_end"] = max((v for k, v in steps.items() if k.endswith(":end")), default=None)
    return out


def _warm_worker_tag() -> str | None:
    """The run tag of runs forked from the warm run worker; None at commits without it (for before/after runs)."""
    try:
        from orchestration.run_launcher import WORKER_TAG
    except ImportError:
        return None
    return WORKER_TAG


def _runs_with_breakdown(instance, records: list) -> list[dict]:
    """Breakdowns of the successful refresh runs, with the landing-file range each one covered."""
    from recsys_platform.ingest.landing import arrival_time_of
    from recsys_platform.realtime import LAST_FILE_TAG

    out = []
    warm_tag = _warm_worker_tag()
    for r in records:
        if r.dagster_run.status.value != "SUCCESS":
            continue
        b = _run_breakdown(instance, r)
        newest = arrival_time_of(r.dagster_run.tags.get(LAST_FILE_TAG, ""))
        b["tick_latency"] = None if newest is None else b["created"] - newest.timestamp()
        b["first_tag"] = r.dagster_run.tags.get("recsys/first_file", "")
        b["warm"] = warm_tag is not None and warm_tag in r.dagster_run.tags
        out.append(b)
    return out


def _carrier(probe: Probe, runs: list[dict]) -> dict:
    """The run whose refreshed file range (files_after, last_file] holds the probe's landing file."""
    for b in runs:
        lower, upper = b.get("files_after") or None, b.get("last_file") or ""
        low_ok = probe.key > lower if lower else probe.key >= b["first_tag"]
        if low_ok and probe.key <= upper:
            return b
    return {}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _import_seconds(env: dict, repeats: int = 3) -> str:
    """Median wall time of importing the code location (what every run process does) and of dagster alone."""
    out = []
    for module in ("orchestration.definitions", "dagster"):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-c", f"import {module}"], env=env, cwd=ROOT, check=True, stderr=subprocess.DEVNULL
            )
            times.append(time.perf_counter() - t0)
        out.append(f"{module} {statistics.median(times):.2f} s")
    return ", ".join(out)


def prepare(env: dict, users: int) -> None:
    """Run `recsys quickstart` into an empty home."""
    print(f"preparing {env['RECSYS_HOME']} with `recsys quickstart --users {users}` ...", flush=True)
    subprocess.run(
        [str(BIN / "recsys"), "quickstart", "--users", str(users)],
        env=env,
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def main() -> None:
    """Parse arguments, start the stack, measure, print figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", default="/tmp/recsys-freshness-home")
    ap.add_argument("--users", type=int, default=2000, help="quickstart size when the home is empty")
    ap.add_argument("--events", type=int, default=60, help="probe events (>= 50)")
    ap.add_argument("--interval", type=float, default=2.0, help="seconds between probes")
    ap.add_argument("--rate", type=float, default=5.0, help="background events per second (simulator)")
    ap.add_argument("--timeout", type=float, default=60.0, help="give up on a probe after this many seconds")
    ap.add_argument("--max-seconds", type=float, default=900.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    started = time.monotonic()
    home = Path(args.home).resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "MLFLOW_", "DAGSTER_"))}
    env |= {"RECSYS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), "RECSYS_LANDING_SENSOR": "running"}
    if not (home / "online_store.sqlite").exists():
        prepare(env, args.users)
    subprocess.run(
        [str(BIN / "python"), "-c", "from recsys_platform.cli import _prepare_environment as p; p()"],
        env=env,
        cwd=ROOT,
        check=True,
    )  # project-local dagster.yaml with the refresh path's settings
    print(f"code location load (import orchestration.definitions, fresh process): {_import_seconds(env)}", flush=True)
    logs = home / "freshness-logs"
    logs.mkdir(exist_ok=True)
    api_port, ui_port = free_port(), free_port()
    base = f"http://127.0.0.1:{api_port}"
    print(f"machine: {os.cpu_count()} cores, load {_load()} before start", flush=True)
    procs: list[subprocess.Popen] = []
    try:
        t0 = time.monotonic()
        procs.append(
            _start(
                [
                    str(BIN / "dagster"),
                    "dev",
                    "-w",
                    str(ROOT / "workspace.yaml"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(ui_port),
                ],
                env,
                logs / "dagster-dev.log",
            )
        )
        procs.append(_start([str(BIN / "recsys"), "serve", "--port", str(api_port)], env, logs / "serve.log"))
        wait_http(f"{base}/healthz", 60)
        wait_http(f"http://127.0.0.1:{ui_port}/server_info", 120)
        print(f"stack up in {time.monotonic() - t0:.1f} s (API {base}, UI http://127.0.0.1:{ui_port})", flush=True)
        instance = _instance(env)
        _wait_idle(instance, 180, warm_up=lambda: _post_warm_up_event(base, home))
        _wait_warm(instance, 120, warm_up=lambda: _post_warm_up_event(base, home, quiet=True))
        wall_start = time.time()
        procs.append(
            _start(
                [
                    str(BIN / "recsys"),
                    "simulate",
                    "--rate",
                    str(args.rate),
                    "--via",
                    "api",
                    "--duration",
                    "0",
                    "--url",
                    base,
                    "--seed",
                    str(args.seed),
                ],
                env,
                logs / "simulate.log",
            )
        )
        outbox = logs / f"push-outbox-{int(wall_start)}.jsonl"
        procs.append(
            _start([str(BIN / "recsys"), "push-worker", "--target", str(outbox)], env, logs / "push-worker.log")
        )
        pushes = Outbox(outbox)
        import polars as pl

        users = pl.read_parquet(home / "lake" / "users.parquet", columns=["user_id"])["user_id"].to_list()
        rng = random.Random(args.seed)
        client = httpx.Client(base_url=base, timeout=10)
        probes: list[Probe] = []
        pending: list[Probe] = []
        next_post = time.monotonic()
        candidates = rng.sample(users, min(len(users), args.events * 3))

        def unsettled() -> list[Probe]:
            return [p for p in probes if p.pushed_wall is None and time.monotonic() - p.accepted <= args.timeout]

        while (len(probes) < args.events or pending or unsettled()) and time.monotonic() - started < args.max_seconds:
            now = time.monotonic()
            if len(probes) < args.events and now >= next_post and candidates:
                user = candidates.pop()
                pushes.read()
                if user in pushes.sent:  # pushed already today by the background load: its push would be a duplicate
                    continue
                doc = client.get(f"/v1/users/{user}/recommendations", params={"limit": 50}).json()
                if doc["source"] != "personalized" or not doc["items"]:
                    continue
                probe = Probe(user=user, item=doc["items"][0]["item_id"])
                event = {
                    "user_id": user,
                    "event_type": "content_complete",
                    "item_id": probe.item,
                    "event_time": datetime.now(UTC).isoformat(),
                    "seconds_listened": 600.0,
                }
                answer = client.post("/v1/events", json={"records": [event]}).json()
                probe.accepted, probe.accepted_wall = time.monotonic(), time.time()
                if answer["FailedRecordCount"]:
                    raise SystemExit(f"probe rejected: {answer}")
                probe.key = answer["Records"][0]["LandingKey"]
                probes.append(probe)
                pending.append(probe)
                next_post = now + args.interval
            for probe in list(pending):
                items = client.get(f"/v1/users/{probe.user}/recommendations", params={"limit": 50}).json()["items"]
                if probe.item not in [i["item_id"] for i in items]:
                    probe.changed = time.monotonic()
                    pending.remove(probe)
                elif time.monotonic() - probe.accepted > args.timeout:
                    pending.remove(probe)
            pushes.read()
            for probe in probes:
                sent = pushes.sent.get(probe.user)
                if probe.pushed_wall is None and sent is not None and sent >= probe.accepted_wall - 1.0:
                    probe.pushed_wall = sent
            time.sleep(0.1)
        load_during = _load()
        since = datetime.fromtimestamp(wall_start, UTC)
        runs = _runs_with_breakdown(instance, [r for r in _refresh_runs(instance) if r.create_timestamp >= since])
        for probe in probes:
            probe.run = _carrier(probe, runs)
        report(probes, runs, load_during, time.monotonic() - started)
        report_pushes(probes, args.timeout)
    finally:
        _stop(procs)


class Outbox:
    """The push worker's file sender output, read incrementally: user -> wall time of their first push."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.sent = path, 0, {}

    def read(self) -> None:
        """Take in the lines appended since the last read (a partial last line waits for the next)."""
        if not self.path.exists():
            return
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read()
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        for line in chunk[:end].splitlines():
            record = json.loads(line)
            at = datetime.fromisoformat(record["sent_at"]).timestamp()
            self.sent.setdefault(record["user_id"], at)


def report_pushes(probes: list[Probe], timeout: float) -> None:
    """Event accepted -> push delivered, timed-out probes counted as failures (infinite latency)."""
    lat = [p.pushed_wall - p.accepted_wall if p.pushed_wall is not None else float("inf") for p in probes]
    delivered = [v for v in lat if v != float("inf")]
    print(
        f"POST accepted -> push delivered (file sender): {len(delivered)} of {len(probes)} probes within "
        f"{timeout:.0f} s; p50 {_pct(lat, 0.5):.2f} s, p95 {_pct(lat, 0.95):.2f} s"
        + (f", max delivered {max(delivered):.2f} s" if delivered else "")
    )
    print(
        json.dumps(
            {
                "push_p50_s": round(_pct(lat, 0.5), 2),
                "push_p95_s": round(_pct(lat, 0.95), 2),
                "push_delivered": len(delivered),
                "push_probes": len(probes),
            }
        )
    )


def report(probes: list[Probe], runs: list[dict], load: str, seconds: float) -> None:
    """Print latency percentiles and the median breakdown."""
    done = [p for p in probes if p.changed is not None]
    changed = [p.changed - p.accepted for p in done]
    # a probe that timed out counts as a failure: an infinite latency in the percentiles
    lat = changed + [float("inf")] * (len(probes) - len(done))
    print(
        f"\nprobes: {len(probes)} posted, {len(done)} changed, {len(probes) - len(done)} timed out "
        f"({seconds:.0f} s total); load average during the run {load}"
    )
    if not changed:
        return
    print(
        f"POST accepted -> recommendations changed: p50 {_pct(lat, 0.5):.2f} s, p95 {_pct(lat, 0.95):.2f} s, "
        f"max changed {max(changed):.2f} s, mean changed {statistics.mean(changed):.2f} s"
    )
    parts: dict[str, list[float]] = {}
    for p in done:
        r = p.run
        if not r or "executing" not in r or "finished" not in r or r.get("first_step") is None:
            continue
        t = r.get("timings", {})
        row = {
            "POST -> its run launched (tick + wait + queue)": r["launched"] - p.accepted_wall,
            "  of which POST -> run created (sensor)": r["created"] - p.accepted_wall,
            "  of which created -> launched (queue)": r["launched"] - r["created"],
            "run start-up (launched -> executing)": r["executing"] - r["launched"],
            "before first step": r["first_step"] - r["executing"],
            **{f"step {k}": v for k, v in r["steps"].items()},
            "  of which refresh read": t.get("read_s", 0.0),
            "  of which features": t.get("features_s", 0.0),
            "  of which score + context": t.get("score_s", 0.0) + t.get("model_load_s", 0.0),
            "  of which write (online store)": t.get("write_s", 0.0),
            "run end (last step -> run finished)": r["finished"] - r["last_step_end"],
            "visible to the poller after run end": (p.changed - p.accepted) - (r["finished"] - p.accepted_wall),
        }
        for k, v in row.items():
            parts.setdefault(k, []).append(v)
    print(f"breakdown over {len(next(iter(parts.values()), []))} probes with their run (median / p95, seconds):")
    for k, v in parts.items():
        print(f"  {k:45s} {statistics.median(v):6.2f} / {_pct(v, 0.95):6.2f}")
    ticks = [r["tick_latency"] for r in runs if r.get("tick_latency") is not None]
    queued = [r["launched"] - r["created"] for r in runs if "launched" in r]
    if ticks:
        print(
            f"sensor tick (newest file landed -> run created), {len(ticks)} runs: median "
            f"{statistics.median(ticks):.2f} s, p95 {_pct(ticks, 0.95):.2f} s; run queued -> launched: median "
            f"{statistics.median(queued):.2f} s, p95 {_pct(queued, 0.95):.2f} s"
        )
    warm = [p for p in done if p.run.get("warm")]
    print(f"probes carried by a run forked from the warm run worker: {len(warm)} of {len(done)}")
    touched = [p.run.get("touched_users") for p in done if p.run.get("touched_users")]
    if touched:
        print(f"users re-scored per refresh run: median {statistics.median(touched):.0f}, max {max(touched)}")
    print(
        json.dumps(
            {
                "p50_s": round(_pct(lat, 0.5), 2),
                "p95_s": round(_pct(lat, 0.95), 2),
                "max_changed_s": round(max(changed), 2),
                "n": len(lat),
                "timed_out": len(probes) - len(done),
                "load": load,
            }
        )
    )


if __name__ == "__main__":
    main()
