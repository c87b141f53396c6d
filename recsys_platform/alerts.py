"""Alerts to operators (a failed run, a failed data contract): one small interface, several deliveries.

`RECSYS_ALERT_URL` chooses where alerts go:

* `file:///abs/path/alerts.jsonl`: one JSON line per alert, appended (tests, log shippers);
* `https://hooks.slack.com/services/...` (any http(s) URL): a Slack incoming-webhook message (`{"text": ...}`,
  which Mattermost and Teams-compatible webhooks accept too);
* `smtp://host:port/?to=ops@example.com&from=recsys@example.com`: an email (`smtps://` for TLS; user and
  password in the URL's userinfo if the server needs them).

Unset, alerts are only logged (at ERROR). A delivery that fails is logged, never raised: an alert must not
fail the sensor that sends it.
"""

from __future__ import annotations

import json
import logging
import smtplib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from recsys_platform.config import ALERT_URL_ENV, Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alert:
    """What happened, in a title and a text, with facts to link to (run id, job, step)."""

    title: str
    text: str
    facts: dict[str, Any] = field(default_factory=dict)
    severity: str = "error"
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def plain(self) -> str:
        """The alert as plain text (Slack message, email body)."""
        lines = [self.title, "", self.text]
        if self.facts:
            lines += ["", *(f"{k}: {v}" for k, v in self.facts.items())]
        return "\n".join(lines)


class Notifier(Protocol):
    """Somewhere alerts go."""

    def send(self, alert: Alert) -> None:
        """Deliver one alert (raising on failure; `notify` logs it)."""
        ...


class LogNotifier:
    """Alerts as ERROR log lines only (no RECSYS_ALERT_URL)."""

    def send(self, alert: Alert) -> None:
        logger.error("ALERT %s: %s %s", alert.title, alert.text, alert.facts)


@dataclass
class FileNotifier:
    """One JSON line per alert, appended to a file."""

    path: Path

    def send(self, alert: Alert) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(alert), default=str) + "\n")


@dataclass
class WebhookNotifier:
    """A Slack incoming-webhook message: POST {"text": ...} as JSON."""

    url: str
    timeout_s: float = 10.0

    def send(self, alert: Alert) -> None:
        import httpx

        httpx.post(self.url, json={"text": alert.plain()}, timeout=self.timeout_s).raise_for_status()


@dataclass
class EmailNotifier:
    """An email through an SMTP server."""

    host: str
    port: int
    sender: str
    recipients: list[str]
    tls: bool = False
    user: str | None = None
    password: str | None = None

    def send(self, alert: Alert) -> None:
        message = EmailMessage()
        message["Subject"] = f"[recsys {alert.severity}] {alert.title}"
        message["From"] = self.sender
        message["To"] = ", ".join(self.recipients)
        message.set_content(alert.plain())
        smtp_class = smtplib.SMTP_SSL if self.tls else smtplib.SMTP
        with smtp_class(self.host, self.port, timeout=10) as smtp:
            if self.user:
                smtp.login(self.user, self.password or "")
            smtp.send_message(message)


def notifier_from_url(url: str | None) -> Notifier:
    """The notifier a RECSYS_ALERT_URL names (LogNotifier when empty); ValueError for an unknown scheme."""
    if not url:
        return LogNotifier()
    parts = urlsplit(url)
    if parts.scheme == "file":
        return FileNotifier(Path(unquote(parts.path)))
    if parts.scheme in ("http", "https"):
        return WebhookNotifier(url)
    if parts.scheme in ("smtp", "smtps"):
        query = parse_qs(parts.query)
        to = [a for v in query.get("to", []) for a in v.split(",") if a]
        if not to:
            raise ValueError(f"{ALERT_URL_ENV}: an smtp URL needs ?to=address")
        return EmailNotifier(
            parts.hostname or "localhost",
            parts.port or (465 if parts.scheme == "smtps" else 25),
            (query.get("from") or ["recsys@localhost"])[0],
            to,
            tls=parts.scheme == "smtps",
            user=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )
    raise ValueError(f"{ALERT_URL_ENV}={url!r}: expected file://, http(s):// (Slack webhook) or smtp(s)://")


def notify(alert: Alert, url: str | None = None) -> bool:
    """Send `alert` where `url` (default: RECSYS_ALERT_URL, `Settings.alert_url`) says; True when delivered,
    False (logged) otherwise."""
    target = url if url is not None else Settings.from_env().alert_url
    try:
        notifier_from_url(target).send(alert)
    except Exception:  # noqa: BLE001 - an alert must never fail its sender
        logger.exception("could not deliver alert %r to %s", alert.title, urlsplit(target).scheme or "log")
        return False
    return True
