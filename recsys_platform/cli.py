"""The `recsys` command line: quickstart, UI, serving, deployment and benchmarks."""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from recsys_platform.config import PROJECT_ROOT, Settings

app = typer.Typer(
    help="recsys-platform: raw app events to fresh personalized recommendations.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
deploy_app = typer.Typer(help="Inspect and roll back the blue-green online store.", no_args_is_help=True)
benchmark_app = typer.Typer(help="Quality and speed benchmarks.", no_args_is_help=True)
app.add_typer(deploy_app, name="deploy")
app.add_typer(benchmark_app, name="benchmark")
console = Console()


def _prepare_environment() -> Settings:
    """Resolve settings and point Dagster at the project-local instance directory."""
    settings = Settings.from_env()
    settings.ensure_local_dirs()
    os.environ.setdefault("DAGSTER_HOME", str(settings.dagster_home))
    dagster_yaml = Path(os.environ["DAGSTER_HOME"]) / "dagster.yaml"
    if not dagster_yaml.exists():
        dagster_yaml.write_text("telemetry:\n  enabled: false\n")
    return settings


def _run_job_with_progress(job_name: str, label: str, tags: dict[str, str] | None = None) -> object:
    """Execute a job of the shared Definitions on the project instance, with a step progress bar."""
    from recsys_platform.definitions import execute_job

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(label, total=None)
        return execute_job(job_name, tags, lambda done, total: progress.update(task, completed=done, total=total))


@app.command()
def quickstart(
    users: Annotated[int, typer.Option(help="Synthetic users.")] = 5000,
    days: Annotated[int, typer.Option(help="Days of history.")] = 28,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    fmt: Annotated[str, typer.Option("--format", help="Landing file format: parquet or jsonl.")] = "parquet",
) -> None:
    """Generate synthetic data into the landing zone, materialize every asset, print a summary."""
    from recsys_platform.generator import GeneratorConfig, generate, write_to_landing
    from recsys_platform.landing import EVENTS_PREFIX, landing_zone_from_url, partition_key_of
    from recsys_platform.summary import print_summary

    started = time.perf_counter()
    settings = _prepare_environment()
    zone = landing_zone_from_url(settings.landing_url)
    with console.status(f"generating {users:,} users x {days} days of events (seed {seed})"):
        ds = generate(GeneratorConfig(n_users=users, days=days, seed=seed, end=datetime.now(UTC)))
        n_files = write_to_landing(ds, zone, fmt=f".{fmt.lstrip('.')}")
    console.print(f"landed {ds.events.height:,} events for {users:,} users in {n_files:,} files under {zone.url}")
    keys = sorted({k for f in zone.list_files(EVENTS_PREFIX) if (k := partition_key_of(f.key))})
    from recsys_platform.definitions import partition_range_tags

    _run_job_with_progress(
        "ingest_events", f"ingesting {len(keys)} arrival hours", partition_range_tags(keys[0], keys[-1])
    )
    _run_job_with_progress("training_cycle", "features, training, evaluation, deploy")
    print_summary(console, settings, time.perf_counter() - started)


@app.command()
def ui(port: Annotated[int, typer.Option(help="Webserver port.")] = 3000) -> None:
    """Start `dagster dev` on the project's workspace with the project-local DAGSTER_HOME."""
    _prepare_environment()
    os.chdir(PROJECT_ROOT)
    dagster = str(Path(sys.executable).with_name("dagster"))
    os.execv(dagster, [dagster, "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), "-p", str(port)])


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
) -> None:
    """Serve recommendations over HTTP (FastAPI; OpenAPI docs at /docs)."""
    import uvicorn

    _prepare_environment()
    uvicorn.run(
        "recsys_platform.api:create_app", factory=True, host=host, port=port, workers=workers, log_level="warning"
    )


@deploy_app.command("status")
def deploy_status() -> None:
    """Show the pointer and both slots of the online store."""
    from recsys_platform.deployment import status
    from recsys_platform.online_store import open_online_store

    settings = _prepare_environment()
    with open_online_store(settings.online_store_url) as store:
        described = status(store)
    table = Table("slot", "active", "model_version", "snapshot_id", "state", "rows", "written_at")
    pointer = described.get("pointer") or {}
    for slot, info in described.get("slots", {}).items():
        table.add_row(
            slot,
            "yes" if pointer.get("active_slot") == slot else "",
            str(info.get("model_version")),
            str(info.get("snapshot_id")),
            str(info.get("state")),
            str(sum((info.get("row_counts") or {}).values())),
            str(info.get("written_at")),
        )
    console.print(table)


@deploy_app.command("rollback")
def deploy_rollback() -> None:
    """Flip the pointer back to the other (previous) slot."""
    from recsys_platform.deployment import rollback
    from recsys_platform.online_store import open_online_store

    settings = _prepare_environment()
    started = time.perf_counter()
    with open_online_store(settings.online_store_url) as store:
        pointer = rollback(store)
    elapsed = (time.perf_counter() - started) * 1000
    console.print(f"active slot is now {pointer.active_slot} (model {pointer.model_version}) after {elapsed:.1f} ms")


@app.command("push-worker")
def push_worker(
    sender: Annotated[str, typer.Option(help="Where to deliver: file (JSON lines) or webhook (HTTP POST).")] = "file",
    target: Annotated[
        str | None, typer.Option(help="File path or webhook URL (default: $RECSYS_HOME/push_outbox.jsonl).")
    ] = None,
    consumer: Annotated[str | None, typer.Option(help="Consumer name (default: host-pid).")] = None,
    batch: Annotated[int, typer.Option(help="Messages leased per receive.")] = 10,
) -> None:
    """Deliver queued push notifications (at least once) until Ctrl-C."""
    import socket

    from recsys_platform.push import open_push_queue
    from recsys_platform.push.worker import FileSender, WebhookSender, run_worker

    settings = _prepare_environment()
    if sender == "file":
        out = FileSender(target or settings.home / "push_outbox.jsonl")
        where = str(out.path)
    elif sender == "webhook":
        if not target:
            raise typer.BadParameter("--target URL is required with --sender webhook", param_hint="--target")
        out, where = WebhookSender(target), target
    else:
        raise typer.BadParameter(f"unknown sender {sender!r}: expected file or webhook", param_hint="--sender")
    name = consumer or f"{socket.gethostname()}-{os.getpid()}"
    marks = {"sent": "[green]sent[/green]", "failed": "[yellow]failed, will retry[/yellow]"}
    counts: dict[str, int] = {}

    def progress(delivery, outcome: str) -> None:
        counts[outcome] = counts.get(outcome, 0) + 1
        m = delivery.message
        label = marks.get(outcome, f"[red]{outcome}[/red]")
        console.print(f"{label} {m.user_id} <- {m.item_id} (attempt {delivery.attempt}): {m.reason}")

    with open_push_queue(settings.push_queue_url) as queue:
        console.print(f"push worker {name}: {queue.url} -> {sender} {where} (Ctrl-C to stop)")
        try:
            run_worker(queue, out, name, batch_size=batch, on_delivery=progress)
        except KeyboardInterrupt:
            console.print("stopping; unacked messages are redelivered after their visibility timeout")
        finally:
            out.close()
        console.print(f"handled {counts or 'nothing'}; queue now {queue.stats().as_dict()}")


if __name__ == "__main__":
    app()
