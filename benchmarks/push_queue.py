"""Push queue throughput: enqueue, then drain with N worker processes (receive + send to file + ack).

Usage: python benchmarks/push_queue.py [--messages 5000] [--workers 1 2 4] [--sender file|null]
                                      [--redis redis://127.0.0.1:6379/15]
`--sender null` measures the queue alone (no fsync per message). Loopback only; bounded by --messages.
Prints one line per backend and worker count, with the load average.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
import uuid

from recsys_platform.push import PushMessage, open_push_queue
from recsys_platform.push.worker import FileSender, run_worker


class NullSender:
    """Accepts every message and does nothing (measures the queue alone)."""

    def send(self, message: PushMessage) -> None:
        """Drop the message."""

    def close(self) -> None:
        """Nothing to release."""


def _drain(url: str, name: str, out: str | None, start: mp.Barrier, counts: mp.Queue) -> None:
    """One worker process: drain the queue into a file (or nowhere), report how many it sent."""
    queue = open_push_queue(url, visibility_timeout_s=30)
    sender = FileSender(out) if out else NullSender()
    start.wait()
    stats = run_worker(queue, sender, name, poll_interval=0.05, batch_size=50, idle_timeout_s=0.5)
    sender.close()
    queue.close()
    counts.put(stats.sent)


def bench(url: str, messages: int, workers: int, workdir: str, sender: str) -> None:
    """Enqueue `messages`, drain them with `workers` processes, print rates."""
    queue = open_push_queue(url, visibility_timeout_s=30)
    queue.drop()
    batch = [
        PushMessage(f"u{i}", f"i{i % 500}", "You just finished a session.", f"push:u{i}:2026-10-01")
        for i in range(messages)
    ]
    started = time.perf_counter()
    for i in range(0, messages, 500):
        queue.enqueue_many(batch[i : i + 500])
    enqueue_s = time.perf_counter() - started
    ctx = mp.get_context("spawn")
    start, counts = ctx.Barrier(workers + 1), ctx.Queue()
    out = os.path.join(workdir, "out.jsonl")
    procs = [
        ctx.Process(target=_drain, args=(url, f"w{w}", out if sender == "file" else None, start, counts))
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    start.wait(timeout=120)  # every worker has imported and connected before the clock starts
    started = time.perf_counter()
    sent = sum(counts.get(timeout=300) for _ in procs)
    drain_s = time.perf_counter() - started - 0.5  # minus the idle timeout that ends each worker
    for p in procs:
        p.join()
    stats = queue.stats()
    backend = url.split(":", 1)[0]
    print(
        f"{backend:6s} workers={workers} messages={messages} enqueue={messages / enqueue_s:,.0f}/s "
        f"deliver(receive+{sender}+ack)={sent / drain_s:,.0f}/s done={stats.done} dead={stats.dead} "
        f"load={os.getloadavg()[0]:.2f}"
    )
    queue.drop()
    queue.close()


def main() -> None:
    """Run the benchmark for SQLite and (if given) Redis."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--sender", choices=["file", "null"], default="file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        urls = [f"sqlite:///{workdir}/push.sqlite"]
        if args.redis:
            urls.append(f"{args.redis}?prefix=bench-push-{uuid.uuid4().hex[:8]}")
        for url in urls:
            for workers in args.workers:
                bench(url, args.messages, workers, workdir, args.sender)


if __name__ == "__main__":
    main()
