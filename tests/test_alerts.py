"""Run-failure alerts through a real notifier: a file, a Slack-style webhook on loopback, an SMTP server on
loopback; a failed delivery is logged, never raised."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import dagster as dg
import pytest

from recsys_platform.alerts import Alert, FileNotifier, notifier_from_url, notify
from sensors.alerts import run_failure_alerts


@dg.op
def load_events() -> int:
    raise ValueError("landing zone unreadable: permission denied\nsecond line of detail")


@dg.job
def failing_job() -> None:
    load_events()


def _failure_context(instance: dg.DagsterInstance) -> dg.RunFailureSensorContext:
    result = failing_job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
    return dg.build_run_status_sensor_context(
        sensor_name="run_failure_alerts",
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=failure,
    ).for_run_failure()


def test_a_failed_run_is_alerted_with_job_step_and_error(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "alerts" / "alerts.jsonl"
    monkeypatch.setenv("RECSYS_ALERT_URL", out.as_uri())
    with dg.instance_for_test() as instance:
        context = _failure_context(instance)
        run_failure_alerts(context)
    [line] = out.read_text().splitlines()
    alert = json.loads(line)
    assert alert["title"] == "Dagster run of failing_job failed"
    assert alert["facts"]["job"] == "failing_job" and alert["facts"]["run_id"] == context.dagster_run.run_id
    assert alert["facts"]["step"] == "load_events"
    assert alert["text"] == "load_events: ValueError: landing zone unreadable: permission denied"
    assert alert["severity"] == "error" and alert["at"]


def test_the_sensor_is_in_the_definitions_and_on_by_default() -> None:
    from orchestration.definitions import defs

    sensor = defs.resolve_sensor_def("run_failure_alerts")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_webhook_and_email_deliveries_reach_real_servers(tmp_path: Path) -> None:
    received: list[bytes] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    alert = Alert("Dagster run of training_cycle failed", "ranker_model: no label", {"run_id": "r1"})
    try:
        assert notify(alert, f"http://127.0.0.1:{server.server_port}/services/T/B/x")
    finally:
        server.shutdown()
    assert json.loads(received[0]) == {"text": alert.plain()} and "run_id: r1" in alert.plain()

    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    mails = []

    class Inbox(Message):
        def handle_message(self, message) -> None:
            mails.append(message)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    controller = Controller(Inbox(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        assert notify(alert, f"smtp://127.0.0.1:{port}/?to=ops@example.com&from=recsys@example.com")
    finally:
        controller.stop()
    [mail] = mails
    assert mail["Subject"] == "[recsys error] Dagster run of training_cycle failed" and mail["To"] == "ops@example.com"
    assert "ranker_model: no label" in mail.get_payload()


def test_bad_targets_are_clear_and_failed_deliveries_are_logged_not_raised(tmp_path: Path, caplog) -> None:
    with pytest.raises(ValueError, match="expected file://"):
        notifier_from_url("ftp://x")
    with pytest.raises(ValueError, match="needs \\?to="):
        notifier_from_url("smtp://mail.example.com")
    assert isinstance(notifier_from_url(f"file://{tmp_path}/a.jsonl"), FileNotifier)
    assert notify(Alert("t", "x"), "http://127.0.0.1:1/hook") is False
    assert "could not deliver alert 't'" in caplog.text
