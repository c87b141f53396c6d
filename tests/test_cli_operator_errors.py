"""Operator errors of the `recsys` entry point: one line with the fix and exit status 1, the traceback only with
`recsys --verbose`; invalid options are usage errors (exit 2) before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys_platform.serve import deployment
from recsys_platform.serve.online_store import open_online_store


def recsys(home: Path, *args: str, store_url: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_") and k != "DAGSTER_HOME"}
    env |= {"RECSYS_HOME": str(home), "COLUMNS": "300"}
    if store_url:
        env["RECSYS_ONLINE_STORE_URL"] = store_url
    return subprocess.run(
        [sys.executable, "-m", "recsys_platform.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    out = (result.stdout + result.stderr).strip()
    assert result.returncode == 1, out
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    assert out.startswith("error: ") and all(f in out for f in fragments), out


@pytest.fixture
def one_version(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/online_store.sqlite"
    with open_online_store(url) as store:
        deployment.deploy(store, "v1", "s1", {"recs": {"u1": '{"items": []}'}})
    return url


def test_rollback_to_an_empty_standby_is_one_line(tmp_path: Path, one_version: str) -> None:
    one_line_error(recsys(tmp_path, "deploy", "rollback", "--from-version", "v1"), "slot 'green' is empty")
    one_line_error(recsys(tmp_path, "deploy", "rollback", "--from-version", "v7"), "serves model v1, not v7")
    ok = recsys(tmp_path, "deploy", "rollback", "--to-version", "v1")  # already served: a safe no-op
    assert ok.returncode == 0 and "model v1" in ok.stdout
    untargeted = recsys(tmp_path, "deploy", "rollback")
    assert untargeted.returncode == 2 and "--to-version" in untargeted.stderr


def test_store_errors_are_one_line_and_verbose_shows_the_traceback(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is not a database" * 100)
    one_line_error(recsys(tmp_path, "deploy", "status", store_url=f"sqlite:///{corrupt}"), "not a database")
    one_line_error(recsys(tmp_path, "deploy", "status", store_url="postgres://db/x"), "unsupported online store URL")
    missing = f"sqlite:///{tmp_path}/typo.sqlite"
    one_line_error(recsys(tmp_path, "deploy", "status", store_url=missing), "no online store file at")
    assert not (tmp_path / "typo.sqlite").exists()
    verbose = recsys(tmp_path, "--verbose", "deploy", "status", store_url="postgres://db/x")
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr


def test_serve_validates_its_port_and_refuses_to_bind_beyond_loopback_without_keys(tmp_path: Path) -> None:
    bad_port = recsys(tmp_path, "serve", "--port", "99999")
    assert bad_port.returncode == 2 and "less than or equal to 65535" in bad_port.stderr
    one_line_error(recsys(tmp_path, "serve", "--host", "0.0.0.0"), "refusing to serve on 0.0.0.0 without")
