"""A production-profile deployment stood up on existing PostgreSQL, Redis and S3 endpoints.

One `ProductionStack` owns what a deployment needs and nothing another deployment uses: two
PostgreSQL databases (Dagster instance, MLflow backend), an S3 bucket (landing, lake, MLflow
artifacts, compute logs) and Redis key prefixes (online store, push queue, Celery broker);
`CeleryWorkers` runs the workers that take its steps. `env` is the environment an operator would
export (deploy/ENVIRONMENT.md); the integration test and the scale benchmark both run the project's
Definitions under it, and `drop()` removes everything it created. `start_moto_server` serves S3
on loopback for tests and benchmarks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from recsys_platform.config import PROJECT_ROOT

CELERY = str(Path(sys.executable).with_name("celery"))
WORKER_START_TIMEOUT_S = 60


def pg_url(url: str, database: str) -> str:
    """The same server as `url`, another database, with the psycopg2 driver SQLAlchemy needs."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="postgresql+psycopg2", path=f"/{database}"))


def pg_admin(url: str, statement: str) -> None:
    """Run one statement outside a transaction (CREATE/DROP DATABASE) on the server of `url`."""
    import psycopg2

    con = psycopg2.connect(urlsplit(url)._replace(scheme="postgresql").geturl())
    con.autocommit = True
    try:
        with con.cursor() as cur:
            cur.execute(statement)
    finally:
        con.close()


def redis_with(url: str, **query: str) -> str:
    """`url` with its query string replaced by `query` (the store and queue read `prefix=` there)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query="&".join(f"{k}={v}" for k, v in query.items())))


def drop_redis_prefix(url: str, prefix: str) -> int:
    """Delete every key under `prefix`; return how many."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        return len(keys)
    finally:
        client.close()


def free_port() -> int:
    """A TCP port on loopback nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, seconds: float, proc: subprocess.Popen | None = None, interval: float = 0.2) -> None:
    """Wait until GET `url` answers 200; RuntimeError after `seconds`, or as soon as `proc` (the server) exits."""
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with status {proc.returncode} before answering")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer 200 within {seconds:.0f} s")
        time.sleep(interval)


def port_error(host: str, port: int) -> str | None:
    """None when something accepts TCP connections on host:port, else why not."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return None
    except OSError as exc:
        return str(exc)


@contextlib.contextmanager
def instance_environment(env: dict[str, str]) -> Iterator[None]:
    """Export, meanwhile, the variables a deployment's dagster.yaml reads (PostgreSQL URL, compute-log
    bucket and endpoint), so this process can open its instance with `DagsterInstance.from_config`."""
    keys = ("DAGSTER_PG_URL", "DAGSTER_COMPUTE_LOG_BUCKET", "DAGSTER_COMPUTE_LOG_PREFIX", "RECSYS_S3_ENDPOINT_URL")
    saved = {k: os.environ.get(k) for k in keys if k in env}
    os.environ.update({k: env[k] for k in saved})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def start_moto_server(timeout_s: float = 20, key_buffer_bytes: int | None = None) -> tuple[subprocess.Popen, str]:
    """Start moto's S3-compatible server (with ranged reads of only the range: `loopback_s3`) on a free
    loopback port: (process, endpoint URL).

    moto holds an object in memory up to `key_buffer_bytes` (its default: 5 MiB) and spills larger ones
    to temporary files; a small value keeps gigabytes of small objects (scale runs) out of its memory."""
    port = free_port()
    env = os.environ | ({"MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(key_buffer_bytes)} if key_buffer_bytes else {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "recsys_platform.dev.loopback_s3", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.monotonic() + timeout_s
    while port_error("127.0.0.1", port) is not None:
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError(f"moto S3 server did not start on 127.0.0.1:{port}")
        time.sleep(0.1)
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return proc, f"http://127.0.0.1:{port}"


@dataclass
class CeleryWorkers:
    """`celery -A dagster_celery.app worker` processes (solo pool) under one environment, logging to `log_dir`."""

    env: dict[str, str]
    log_dir: Path
    names: tuple[str, ...] = ("alpha", "beta")
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    # Each step in a fresh child process that exits after it (prefork, one task per child), so what a
    # heavy step allocated is returned before the next; False: the steps run in the worker process.
    fresh_process_per_step: bool = False
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def queue(self) -> str:
        return self.env.get("RECSYS_CELERY_QUEUE", "dagster")

    def _log(self, name: str) -> Path:
        return self.log_dir / f"worker-{name}.log"

    def start(self) -> None:
        """Start one worker per name (node name `<name>-<tag>@host`) and wait until all are ready."""
        for name in self.names:
            log = open(self._log(name), "w")  # noqa: SIM115 (closed with the process)
            self.processes.append(
                subprocess.Popen(
                    [CELERY, "-A", "dagster_celery.app", "worker", "-Q", self.queue, *self._pool_args()]
                    + ["-n", f"{name}-{self.tag}@%h", "--loglevel", "INFO"],
                    env=self.env,
                    cwd=PROJECT_ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while not all("ready." in self._log(n).read_text() for n in self.names):
            if time.monotonic() > deadline or any(w.poll() is not None for w in self.processes):
                raise RuntimeError("celery workers did not start:\n" + self.logs())
            time.sleep(0.2)

    def _pool_args(self) -> list[str]:
        if self.fresh_process_per_step:
            return ["--pool", "prefork", "--concurrency", "1", "--max-tasks-per-child", "1"]
        return ["--pool", "solo"]

    def pids(self) -> tuple[int, ...]:
        """The worker processes (their step children are in their process trees)."""
        return tuple(p.pid for p in self.processes)

    def logs(self, tail: int = 3000) -> str:
        """The end of every worker's log (for failure messages)."""
        return "\n".join(self._log(n).read_text()[-tail:] for n in self.names if self._log(n).exists())

    def stop(self) -> None:
        """Warm shutdown; kill a worker still running after 20 s."""
        for proc in self.processes:
            proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()


@dataclass
class ProductionStack:
    """Databases, bucket and key prefixes of one production-profile deployment, and its environment."""

    postgres_url: str
    redis_url: str
    s3_endpoint: str
    root: Path
    stack_id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def bucket(self) -> str:
        return f"recsys-prod-{self.stack_id}"

    @property
    def databases(self) -> tuple[str, str]:
        """(Dagster instance, MLflow backend) database names."""
        return f"recsys_dagster_{self.stack_id}", f"recsys_mlflow_{self.stack_id}"

    @property
    def prefixes(self) -> dict[str, str]:
        """Redis key prefix per use: online store, push queue, Celery broker and results."""
        return {what: f"recsys-{what}-{self.stack_id}" for what in ("store", "push", "celery")}

    @property
    def env(self) -> dict[str, str]:
        """The process environment of every run, worker and reader of this deployment."""
        dagster_db, mlflow_db = self.databases
        prefixes = self.prefixes
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "MLFLOW_", "DAGSTER_"))}
        return (
            env
            | {
                "DAGSTER_HOME": str(self.root / "dagster_home"),
                "DAGSTER_PG_URL": pg_url(self.postgres_url, dagster_db),
                "DAGSTER_COMPUTE_LOG_BUCKET": self.bucket,
                "DAGSTER_COMPUTE_LOG_PREFIX": "compute-logs",
                "RECSYS_HOME": str(self.root / "home"),
                "RECSYS_LANDING_URL": f"s3://{self.bucket}/landing",
                "RECSYS_LAKE_URL": f"s3://{self.bucket}/lake",
                "RECSYS_S3_ENDPOINT_URL": self.s3_endpoint,
                "MLFLOW_TRACKING_URI": pg_url(self.postgres_url, mlflow_db),
                "RECSYS_MLFLOW_ARTIFACTS": f"s3://{self.bucket}/mlflow",
                "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
                "RECSYS_ONLINE_STORE_URL": redis_with(self.redis_url, prefix=prefixes["store"]),
                "RECSYS_PUSH_QUEUE_URL": redis_with(self.redis_url, prefix=prefixes["push"]),
                "RECSYS_EXECUTOR": "celery",
                "RECSYS_CELERY_BROKER_URL": self.redis_url,
                "RECSYS_CELERY_BACKEND_URL": self.redis_url,
                "RECSYS_CELERY_KEY_PREFIX": f"{prefixes['celery']}:",
                "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT / "deploy"), str(PROJECT_ROOT)]),
                "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
                "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
                "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            }
            | self.extra_env
        )

    def create(self) -> None:
        """Create the databases and the bucket, and install deploy/dagster.yaml as the instance."""
        import boto3

        home = Path(self.env["DAGSTER_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROJECT_ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
        for db in self.databases:
            pg_admin(self.postgres_url, f"CREATE DATABASE {db}")
        boto3.client("s3", endpoint_url=self.s3_endpoint).create_bucket(Bucket=self.bucket)

    def drop(self) -> None:
        """Remove the databases and Redis keys (the bucket is left to the S3 server's owner)."""
        for db in self.databases:
            pg_admin(self.postgres_url, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        for prefix in self.prefixes.values():
            drop_redis_prefix(self.redis_url, prefix)
