"""Load-test the serving API (granian or uvicorn, wrk) on SQLite and Redis, then deploy and roll back under load.

Usage:
    python benchmarks/serve.py [--backend sqlite|redis|both] [--server recsys|granian|uvicorn] [--workers 2]
        [--connections 16] [--duration 15] [--app-root DIR]

Requests are mixed the way clients send them (`request_path`): known users, users with features but no list
(segment popularity fallback) and unknown users (global fallback); a content_type filter, exclude_kids, both or
neither; limits from 1 to 100 or none. A consistency checker sends the same mix during the whole deploy +
rollback phase and checks every body (one version per response, filters and limit honoured, ranks 1..n, the
source the user should get). Any non-2xx answer, socket error, checker error or mixed-version response fails
the run (exit status 1). `--app-root` serves another checkout's code (e.g. the commit before a change) with
the same load.

`--server recsys` (the default) runs `recsys serve` itself, as users start the API: granian, and the JSON access log
(written to the server's log file in the benchmark's temporary directory); `granian` and `uvicorn` run the same app
under that server without the access log, for comparing servers.

Needs `wrk` (Debian/Ubuntu: `apt-get install -y wrk`) and, for the Redis backend, a Redis server
(`--redis-url`, default redis://127.0.0.1:6379/14; the benchmark uses its own key prefix and deletes it).
Everything runs on loopback and every phase is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from recsys_platform.schemas import CONTENT_TYPES  # noqa: E402
from recsys_platform.serve import deployment  # noqa: E402
from recsys_platform.serve.online_store import open_online_store  # noqa: E402

N_USERS = 10_000  # u0 .. u9999 have a ranked list and features
N_FEATURE_ONLY = 2_000  # u10000 .. u11999 have features (a segment) but no list: segment popularity fallback
N_ITEMS_PER_USER = 50
SEGMENTS = [f"{lang}:{lvl}" for lang in ("en", "de", "fr") for lvl in ("beginner", "advanced")]
# The request mix (`request_path` draws from it; the wrk script below draws the same way): 80% known users,
# 10% users with features only, 10% unknown users; 15% content_type, 10% exclude_kids, 5% both; limits.
LIMITS = ["", "limit=1", "limit=5", "limit=10", "limit=10", "limit=10", "limit=20", "limit=50", "limit=100"]
WRK_SCRIPT = """
math.randomseed(%(seed)d)
local content_types = {%(content_types)s}
local limits = {%(limits)s}
local paths = {}
for n = 1, 20000 do
  local r = math.random()
  local user
  if r < 0.8 then user = "u" .. math.random(0, %(max_user)d)
  elseif r < 0.9 then user = "u" .. math.random(%(n_users)d, %(max_featured)d)
  else user = "new" .. math.random(0, 1000000) end
  local params = {}
  local l = limits[math.random(#limits)]
  if l ~= "" then params[#params + 1] = l end
  local f = math.random()
  if f < 0.15 then params[#params + 1] = "content_type=" .. content_types[math.random(#content_types)]
  elseif f < 0.25 then params[#params + 1] = "exclude_kids=true"
  elseif f < 0.30 then
    params[#params + 1] = "content_type=" .. content_types[math.random(#content_types)]
    params[#params + 1] = "exclude_kids=true"
  end
  local query = table.concat(params, "&")
  if query ~= "" then query = "?" .. query end
  paths[n] = "/v1/users/" .. user .. "/recommendations" .. query
end
local i = 0
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %%d, "duration_us": %%d, "non_2xx": %%d, "socket_errors": %%d, ' ..
    '"p50_us": %%d, "p95_us": %%d, "p99_us": %%d, "max_us": %%d}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
"""


def ranked(version: str, rng: random.Random, n: int) -> str:
    """A ranked list whose item ids carry the model version (to detect mixed responses)."""
    items = [
        {
            "item_id": f"{version}-i{rng.randrange(5000)}",
            "score": round(n - j + rng.random(), 4),
            "content_type": CONTENT_TYPES[rng.randrange(len(CONTENT_TYPES))],
            "is_kids": rng.random() < 0.1,
        }
        for j in range(n)
    ]
    return json.dumps({"items": items, "generated_at": "2025-01-01T00:00:00+00:00"})


def build_payload(version: str, seed: int) -> dict[str, dict[str, str]]:
    """Synthetic recs for N_USERS users, features for them and N_FEATURE_ONLY more, popularity lists."""
    rng = random.Random(seed)
    featured = range(N_USERS + N_FEATURE_ONLY)
    return {
        "recs": {f"u{i}": ranked(version, rng, N_ITEMS_PER_USER) for i in range(N_USERS)},
        "user_features": {f"u{i}": json.dumps({"segment": SEGMENTS[i % len(SEGMENTS)]}) for i in featured},
        "popular": {s: ranked(version, rng, N_ITEMS_PER_USER) for s in [*SEGMENTS, "__global__"]},
    }


def request_path(rng: random.Random) -> tuple[str, dict[str, str], str]:
    """One request of the mix: (path, query parameters, the source the answer must name)."""
    r = rng.random()
    if r < 0.8:
        user, source = f"u{rng.randrange(N_USERS)}", "personalized"
    elif r < 0.9:
        user, source = f"u{N_USERS + rng.randrange(N_FEATURE_ONLY)}", "popularity_fallback"
    else:
        user, source = f"new{rng.randrange(1_000_000)}", "popularity_fallback"
    params = dict(p.split("=") for p in [rng.choice(LIMITS)] if p)
    f = rng.random()
    if f < 0.15 or 0.25 <= f < 0.30:
        params["content_type"] = rng.choice(CONTENT_TYPES)
    if 0.15 <= f < 0.30:
        params["exclude_kids"] = "true"
    return f"/v1/users/{user}/recommendations", params, source


def check_body(body: dict, params: dict[str, str], source: str) -> str | None:
    """What is wrong with a recommendations body for this request (None: nothing); "mixed" for mixed versions."""
    version, items = body["model_version"], body["items"]
    if any(not i["item_id"].startswith(f"{version}-") for i in items):
        return "mixed"
    if body["source"] != source:
        return f"source {body['source']}, expected {source}"
    if len(items) > int(params.get("limit", 10)) or [i["rank"] for i in items] != list(range(1, len(items) + 1)):
        return f"{len(items)} items for limit {params.get('limit', 10)} or ranks not 1..n"
    if "content_type" in params and any(i["content_type"] != params["content_type"] for i in items):
        return "content_type filter not applied"
    if params.get("exclude_kids") == "true" and any(i["is_kids"] for i in items):
        return "exclude_kids not applied"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(server: str, port: int, workers: int) -> list[str]:
    """The command line of `server`: `recsys serve` (granian, access log on), or the app under granian or uvicorn
    (on uvloop + httptools) without an access log."""
    if server == "recsys":
        return [sys.executable, "-m", "recsys_platform.cli", "serve", "--port", str(port), "--workers", str(workers)]
    if server == "granian":
        return [
            sys.executable, "-m", "granian", "--interface", "asgi", "--factory",
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
            "--loop", "uvloop", "--no-access-log", "--log-level", "warning",
            "recsys_platform.serve.api:create_app",
        ]  # fmt: skip
    return [
        sys.executable, "-m", "uvicorn", "recsys_platform.serve.api:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


def start_server(store_url: str, port: int, args: argparse.Namespace) -> subprocess.Popen:
    """Start the server on the code in `--app-root` and wait until /healthz answers."""
    app_root = Path(args.app_root).resolve()
    env = {**os.environ, "RECSYS_ONLINE_STORE_URL": store_url, "PYTHONPATH": str(app_root)}
    log = args.work_dir / f"server-{port}.log"
    with log.open("ab") as out:  # the access log goes here, one line per request
        proc = subprocess.Popen(
            server_command(args.server, port, args.workers), cwd=app_root, env=env, stdout=out, stderr=out
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.terminate()
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    raise RuntimeError(f"{args.server} did not become healthy within 30 s; its log ends:\n{tail}")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its direct children (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def wrk_script(seed: int) -> str:
    """The wrk Lua script of the client mix, seeded."""
    return WRK_SCRIPT % {
        "seed": seed,
        "max_user": N_USERS - 1,
        "n_users": N_USERS,
        "max_featured": N_USERS + N_FEATURE_ONLY - 1,
        "content_types": ", ".join(f'"{c}"' for c in CONTENT_TYPES),
        "limits": ", ".join(f'"{x}"' for x in LIMITS),
    }


def run_wrk(port: int, duration: int, connections: int, threads: int, seed: int) -> dict:
    """Drive the API with wrk for `duration` seconds and return its summary."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(wrk_script(seed))
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "2s", "-s", f.name]
    out = subprocess.run([*cmd, f"http://127.0.0.1:{port}"], capture_output=True, text=True, timeout=duration + 30)
    os.unlink(f.name)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    result = json.loads(line.removeprefix("WRKJSON "))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


class ConsistencyChecker(threading.Thread):
    """Sends the request mix in a loop and checks every body (`check_body`): one version, filters, limit, source."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.responses = self.errors = self.mixed = 0
        self.versions: dict[str, int] = {}
        self.problems: list[str] = []

    def run(self) -> None:
        rng = random.Random(1)
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5) as client:
            while not self.stop.is_set():
                path, params, source = request_path(rng)
                try:
                    r = client.get(path, params=params)
                except httpx.HTTPError as exc:
                    self.errors += 1
                    self.problems.append(f"{path} {params}: {exc}")
                    continue
                if r.status_code != 200:
                    self.errors += 1
                    self.problems.append(f"{path} {params}: {r.status_code} {r.text[:200]}")
                    continue
                body = r.json()
                version = body["model_version"]
                self.responses += 1
                self.versions[version] = self.versions.get(version, 0) + 1
                problem = check_body(body, params, source)
                if problem == "mixed":
                    self.mixed += 1
                elif problem is not None:
                    self.errors += 1
                    self.problems.append(f"{path} {params}: {problem}")


def bench_backend(name: str, url: str, args: argparse.Namespace, payloads: dict) -> dict:
    """Fill the store, measure steady-state load, then deploy + roll back under load."""
    store = open_online_store(url)
    t0 = time.perf_counter()
    deployment.deploy(store, "v1", "bench-1", payloads["v1"])
    fill_s = time.perf_counter() - t0
    port = free_port()
    server = start_server(url, port, args)
    try:
        run_wrk(port, 3, args.connections, args.threads, seed=0)  # warm-up
        cpu_before = tree_cpu_seconds(server.pid)
        steady = run_wrk(port, args.duration, args.connections, args.threads, seed=1)
        loadavg = os.getloadavg()
        steady["server_cpu_us_per_request"] = (tree_cpu_seconds(server.pid) - cpu_before) / steady["requests"] * 1e6

        checker = ConsistencyChecker(port)
        checker.start()
        box: dict = {}

        def under_load() -> None:
            box["wrk"] = run_wrk(port, args.duration, args.connections, args.threads, seed=2)

        load = threading.Thread(target=under_load)
        load.start()
        time.sleep(1)
        t0 = time.perf_counter()
        report = deployment.deploy(store, "v2", "bench-2", payloads["v2"])
        deploy_s = time.perf_counter() - t0
        time.sleep(1)
        t0 = time.perf_counter()
        pointer = deployment.rollback(store, to_version="v1")
        rollback_ms = (time.perf_counter() - t0) * 1000
        load.join()
        checker.stop.set()
        checker.join()
    finally:
        server.terminate()
        server.wait(timeout=10)
        if name == "redis":
            store.drop_all()
        store.close()
    return {
        "backend": name,
        "fill_s": fill_s,
        "loadavg": " ".join(f"{x:.2f}" for x in loadavg),
        "steady": steady,
        "under_deploy": box["wrk"],
        "deploy_s": deploy_s,
        "deploy_rows": report.row_counts,
        "rollback_ms": rollback_ms,
        "rolled_back_to": pointer.model_version,
        "checker": {
            "responses": checker.responses,
            "errors": checker.errors,
            "mixed": checker.mixed,
            "versions": checker.versions,
            "problems": checker.problems[:10],
        },
    }


def failures(r: dict) -> list[str]:
    """Why a backend's run fails: any non-2xx, socket error, checker error or mixed-version response."""
    out = [
        f"{phase}: {w['non_2xx']} non-2xx, {w['socket_errors']} socket errors"
        for phase, w in (("steady state", r["steady"]), ("during deploy+rollback", r["under_deploy"]))
        if w["non_2xx"] or w["socket_errors"]
    ]
    c = r["checker"]
    if c["errors"] or c["mixed"] or not c["responses"]:
        out.append(f"checker: {c['responses']} responses, {c['errors']} errors, {c['mixed']} mixed {c['problems']}")
    return out


def print_result(r: dict, args: argparse.Namespace) -> None:
    def line(label: str, w: dict) -> str:
        return (
            f"  {label:<22} {w['rps']:>8.0f} req/s  p50 {w['p50_us'] / 1000:5.2f} ms"
            f"  p95 {w['p95_us'] / 1000:5.2f} ms"
            f"  p99 {w['p99_us'] / 1000:5.2f} ms  max {w['max_us'] / 1000:6.1f} ms  non-2xx {w['non_2xx']}"
            f"  socket errors {w['socket_errors']}"
        )

    print(
        f"\n[{r['backend']}] {args.server} workers={args.workers} "
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s"
    )
    print(f"  filled 10k users x 50 items in {r['fill_s']:.1f}s")
    print(line("steady state", r["steady"]))
    cpu_us = r["steady"]["server_cpu_us_per_request"]
    print(f"  server CPU per request: {cpu_us:.0f} us (= {1e6 / cpu_us:.0f} req/s per fully available core)")
    print(f"  load average during run (other processes share these {os.cpu_count()} cores): {r['loadavg']}")
    print(line("during deploy+rollback", r["under_deploy"]))
    print(f"  deploy of v2 under load: {r['deploy_s']:.2f}s {r['deploy_rows']}")
    print(f"  rollback: {r['rollback_ms']:.1f} ms -> {r['rolled_back_to']}")
    c = r["checker"]
    print(f"  checker: {c['responses']} responses, {c['errors']} errors, {c['mixed']} mixed-version, {c['versions']}")
    for problem in c["problems"]:
        print(f"    {problem}")


def main() -> None:
    """Run the benchmark for the chosen backends and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "redis", "both"], default="both")
    parser.add_argument(
        "--server", choices=["recsys", "granian", "uvicorn"], default="recsys", help="recsys: `recsys serve` itself"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--redis-url", default=os.environ.get("RECSYS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"))
    parser.add_argument("--app-root", default=str(REPO), help="serve the code of this checkout (default: this one)")
    parser.add_argument("--json", action="store_true", help="also print the raw results as JSON")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk (or brew install wrk)")
    print("building synthetic payloads (10k users x 50 items, two versions)...", flush=True)
    payloads = {"v1": build_payload("v1", seed=1), "v2": build_payload("v2", seed=2)}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("RECSYS_HOME", f"{tmp}/home")  # the served log's landing files go there
        args.work_dir = Path(tmp)  # the servers' logs (the access log) go there
        backends = ["sqlite", "redis"] if args.backend == "both" else [args.backend]
        for name in backends:
            if name == "sqlite":
                url = f"sqlite:///{tmp}/bench.sqlite"
            else:
                sep = "&" if "?" in args.redis_url else "?"
                url = f"{args.redis_url}{sep}prefix=bench-{os.getpid()}"
            result = bench_backend(name, url, args, payloads)
            print_result(result, args)
            results.append(result)
    if args.json:
        print(json.dumps(results, indent=2))
    failed = [f"[{r['backend']}] {why}" for r in results for why in failures(r)]
    if failed:
        sys.exit("FAILED: " + "; ".join(failed))


if __name__ == "__main__":
    main()
