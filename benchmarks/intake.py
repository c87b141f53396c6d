"""Event intake under concurrent clients: how many landing files N clients make, and what the rate limit answers.

    python benchmarks/intake.py [--clients 8] [--duration 15] [--rate 0]

Starts `uvicorn` on loopback over a temporary RECSYS_HOME, then N threads each POST one-record batches to
/v1/events as fast as they are answered (the probe that once made 2,045 landing files in 30 s). Prints
requests/s, answers by status, landing files written and records per file, and p50/p99 latency of the 200s.
`--rate` sets RECSYS_INGEST_RATE (0: no rate limit, to see the file batching alone; 50 is the default).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from recsys_platform.dev.production_stack import free_port, wait_http  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--rate", type=float, default=0.0, help="RECSYS_INGEST_RATE for the server")
    parser.add_argument("--linger-ms", type=float, default=None, help="RECSYS_INGEST_LINGER_MS (default: the server's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
        env |= {"RECSYS_HOME": home, "RECSYS_INGEST_RATE": str(args.rate), "RECSYS_ACCESS_LOG": "0"}
        env |= {"PYTHONPATH": str(REPO)}
        if args.linger_ms is not None:
            env["RECSYS_INGEST_LINGER_MS"] = str(args.linger_ms)
        port = free_port()
        cmd = [sys.executable, "-m", "uvicorn", "recsys_platform.serve.api:create_app", "--factory", "--host"]
        cmd += ["127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"]
        proc = subprocess.Popen(cmd, cwd=REPO, env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{base}/healthz", 30, proc)
            statuses: Counter[int] = Counter()
            latencies: list[float] = []
            lock = threading.Lock()
            stop = time.monotonic() + args.duration

            def client(n: int) -> None:
                with httpx.Client(base_url=base, timeout=10) as c:
                    i = 0
                    while time.monotonic() < stop:
                        record = {
                            "user_id": f"u{n}",
                            "event_type": "app_open",
                            "event_time": datetime.now(UTC).isoformat(),
                        }
                        t0 = time.perf_counter()
                        r = c.post("/v1/events", json={"records": [record]})
                        dt = time.perf_counter() - t0
                        with lock:
                            statuses[r.status_code] += 1
                            if r.status_code == 200:
                                latencies.append(dt)
                        i += 1

            threads = [threading.Thread(target=client, args=(n,)) for n in range(args.clients)]
            started = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.monotonic() - started
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        files = list(Path(home, "landing", "events").rglob("*.parquet"))
    total = sum(statuses.values())
    accepted = statuses.get(200, 0)
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 2 else [float("nan")] * 99
    result = {
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "requests_per_s": round(total / elapsed, 1),
        "statuses": dict(statuses),
        "landing_files": len(files),
        "records_per_file": round(accepted / max(len(files), 1), 1),
        "p50_ms": round(q[49] * 1000, 1),
        "p99_ms": round(q[98] * 1000, 1),
        "rate_limit": args.rate,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
