"""What the read path's optional work costs: API keys, the JSON access log and the served log. The same store,
the same wrk load, one uvicorn worker per configuration, configurations interleaved over several rounds (so drift
hits all alike).

    python benchmarks/serve_costs.py [--duration 10] [--rounds 3] [--connections 8]

Configurations: `off` (no key, no access log, no served log), `keys` (RECSYS_READ_API_KEY set, every request
sends `Authorization: Bearer`), `access-log` (one JSON line per request, to /dev/null), `served-log` (every
served list buffered and written to the landing zone). Prints requests/s (median of the rounds), p99 latency
and the cost relative to `off`; non-2xx answers fail it. Needs `wrk` (apt-get install -y wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from serve import build_payload, wrk_script  # noqa: E402

from recsys_platform.dev.production_stack import free_port, wait_http  # noqa: E402
from recsys_platform.serve import deployment  # noqa: E402
from recsys_platform.serve.online_store import open_online_store  # noqa: E402

KEY = "bench-read-key"
BASE = {"RECSYS_ACCESS_LOG": "0", "RECSYS_SERVED_LOG": "0"}
CONFIGS = {
    "off": (BASE, []),
    "keys": ({**BASE, "RECSYS_READ_API_KEY": KEY}, ["-H", f"Authorization: Bearer {KEY}"]),
    "access-log": ({**BASE, "RECSYS_ACCESS_LOG": "1"}, []),
    "served-log": ({**BASE, "RECSYS_SERVED_LOG": "1"}, []),
}


def start(store_url: str, home: str, port: int, env_extra: dict[str, str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env |= {"RECSYS_ONLINE_STORE_URL": store_url, "RECSYS_HOME": home, "PYTHONPATH": str(REPO), **env_extra}
    code = (
        "import uvicorn; from recsys_platform.serve.observability import configure_access_log; "
        "configure_access_log(); "
        f"uvicorn.run('recsys_platform.serve.api:create_app', factory=True, host='127.0.0.1', port={port}, "
        "loop='uvloop', http='httptools', access_log=False, log_level='warning')"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 30, proc)
    except RuntimeError:
        proc.terminate()
        raise
    return proc


def wrk(port: int, args: argparse.Namespace, headers: list[str], seed: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(wrk_script(seed))
    cmd = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s", "--timeout", "2s", "-s", f.name, *headers]
    out = subprocess.run([*cmd, f"http://127.0.0.1:{port}"], capture_output=True, text=True, timeout=args.duration + 30)
    os.unlink(f.name)
    line = next(x for x in out.stdout.splitlines() if x.startswith("WRKJSON "))
    result = json.loads(line.removeprefix("WRKJSON "))
    if result["non_2xx"] or result["socket_errors"]:
        raise RuntimeError(f"errors under load: {result}")
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/store.sqlite"
        with open_online_store(url) as store:
            deployment.deploy(store, "v1", "bench-1", build_payload("v1", seed=1))
        runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
        for r in range(args.rounds):
            order = list(CONFIGS) if r % 2 == 0 else list(reversed(CONFIGS))
            for name in order:
                env_extra, headers = CONFIGS[name]
                port = free_port()
                proc = start(url, tmp, port, env_extra)
                try:
                    wrk(port, argparse.Namespace(**{**vars(args), "duration": 2}), headers, seed=99)  # warm-up
                    runs[name].append(wrk(port, args, headers, seed=r))
                finally:
                    proc.terminate()
                    proc.wait(timeout=10)
    base = statistics.median(x["rps"] for x in runs["off"])
    print(f"{'config':<11} {'req/s (median)':>15} {'p99 ms':>8} {'vs off':>8}   rounds req/s")
    summary = {}
    for name, results in runs.items():
        rps = statistics.median(x["rps"] for x in results)
        p99 = statistics.median(x["p99_us"] for x in results) / 1000
        summary[name] = {"rps": rps, "p99_ms": p99, "cost_vs_off": 1 - rps / base}
        rounds = " ".join(f"{x['rps']:.0f}" for x in results)
        print(f"{name:<11} {rps:>15.0f} {p99:>8.2f} {1 - rps / base:>+8.1%}   {rounds}")
    print(json.dumps({"machine": f"{os.cpu_count()} cores", "args": vars(args), "summary": summary}))


if __name__ == "__main__":
    main()
