"""The `recsys` command line: quickstart, UI, serving, deployment and benchmarks."""

from __future__ import annotations

import os
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

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
_SHOW_TRACEBACKS = {"on": False}


@app.callback()
def _root(
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Show the traceback of an operator error (default: one line).")
    ] = False,
) -> None:
    """recsys-platform: raw app events to fresh personalized recommendations."""
    _SHOW_TRACEBACKS["on"] = verbose


def _operator_errors() -> tuple[type[BaseException], ...]:
    """Errors an operator causes and can fix (a store URL, a deployment state, a setting): one line each."""
    from recsys_platform.serve.online_store import OnlineStoreError

    return (OnlineStoreError, ValueError, OSError)


def main() -> None:
    """The `recsys` entry point: the Typer app, with operator errors as one line and exit status 1
    (`recsys --verbose ...` shows the traceback)."""
    try:
        app(prog_name="recsys")
    except _operator_errors() as exc:
        if _SHOW_TRACEBACKS["on"]:
            raise
        console.print(f"[red]error:[/red] {exc}  [dim](recsys --verbose ... shows the traceback)[/dim]", soft_wrap=True)
        sys.exit(1)


def _prepare_environment() -> Settings:
    """Resolve settings and point Dagster at the project-local instance directory."""
    settings = Settings.from_env()
    settings.ensure_local_dirs()
    # Dagster reads DAGSTER_HOME itself: set it for the instance this process and its runs open.
    dagster_yaml = Path(os.environ.setdefault("DAGSTER_HOME", str(settings.dagster_home))) / "dagster.yaml"
    if not dagster_yaml.exists():
        dagster_yaml.write_text("telemetry:\n  enabled: false\n")
    from orchestration.instance_storage import EVENT_LOG_YAML
    from orchestration.run_launcher import EARLIER_WARM_LAUNCHER_YAML, WARM_LAUNCHER_YAML
    from orchestration.run_queue import INSTANCE_YAML

    # The refresh path's run queue and retries, the event log without a disk flush per event
    # (orchestration.instance_storage) and the refresh runs forked from a warm worker (orchestration.run_launcher),
    # unless the instance configures its own.
    _add_instance_settings(dagster_yaml, INSTANCE_YAML, ("run_queue", "run_coordinator", "concurrency", "run_retries"))
    _add_instance_settings(dagster_yaml, EVENT_LOG_YAML, ("storage", "event_log_storage"))
    _add_instance_settings(dagster_yaml, WARM_LAUNCHER_YAML, ("run_launcher",), EARLIER_WARM_LAUNCHER_YAML)
    return settings


def _add_instance_settings(
    dagster_yaml: Path, block: str, keys: tuple[str, ...], earlier: tuple[str, ...] = ()
) -> None:
    """Append `block` to the instance's dagster.yaml unless it already sets one of the top-level `keys`; an
    `earlier` version of the block (one this CLI wrote), found verbatim, is replaced with it."""
    text = dagster_yaml.read_text()
    for old in earlier:
        if old in text:
            dagster_yaml.write_text(text.replace(old, block))
            return
    if not re.search(rf"^({'|'.join(keys)}):", text, flags=re.MULTILINE):
        dagster_yaml.write_text(text.rstrip("\n") + "\n" + block)


VerboseOption = Annotated[bool, typer.Option("--verbose", help="Print Dagster's DEBUG logs (default: INFO and up).")]


def _run_job_with_progress(
    job_name: str, label: str, tags: dict[str, str] | None = None, verbose: bool = False
) -> object:
    """Execute a job of the shared Definitions on the project instance, with a step progress bar;
    exit with status 1 as soon as the run fails."""
    # The CLI's runs execute in this process, one step at a time, with the machine to themselves: unless set, the
    # ranker trains on every core (2 threads: 12-13 s instead of 20-23 s for the quickstart's ranker on 2 idle
    # cores). Runs launched by the daemon keep PipelineParams' single thread, as they share the box. Read when
    # the definitions are first loaded, which is in the first job this process runs.
    os.environ.setdefault("RECSYS_RANKER_THREADS", str(len(os.sched_getaffinity(0)) or 1))
    from orchestration.runner import JobRunFailed, execute_job

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(label, total=None)
        try:
            return execute_job(
                job_name,
                tags,
                lambda done, total: progress.update(task, completed=done, total=total),
                log_level="DEBUG" if verbose else "INFO",
            )
        except JobRunFailed as exc:
            progress.stop()
            console.print(f"[red]{label} failed:[/red] {exc}", soft_wrap=True)
            raise typer.Exit(1) from None


@app.command()
def quickstart(
    users: Annotated[int, typer.Option(min=1, help="Synthetic users.")] = 5000,
    days: Annotated[int, typer.Option(min=1, help="Days of history.")] = 28,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    fmt: Annotated[str, typer.Option("--format", help="Landing file format: parquet or jsonl.")] = "parquet",
    tastes: Annotated[
        Literal["latent", "profile"],
        typer.Option(
            help="Where users' tastes come from: hidden factors no feature can read (latent), or terms "
            "that each have a matching ranker feature (profile, which flatters the ranker)."
        ),
    ] = "latent",
    verbose: VerboseOption = False,
) -> None:
    """Generate synthetic data into the landing zone, materialize every asset, print a summary."""
    from recsys_platform.analytics.summary import print_summary
    from recsys_platform.dev.generator import GeneratorConfig, generate, write_to_landing
    from recsys_platform.ingest.landing import EVENTS_PREFIX, landing_zone_from_url, partition_key_of

    started = time.perf_counter()
    with console.status(f"generating {users:,} users x {days} days of events (seed {seed}, {tastes} tastes)"):
        ds = generate(GeneratorConfig(n_users=users, days=days, seed=seed, end=datetime.now(UTC), tastes=tastes))
    _require_enough_generated(ds.events)  # before anything is written or run
    settings = _prepare_environment()
    zone = landing_zone_from_url(settings.landing_url)
    with console.status("writing the landing zone"):
        n_files = write_to_landing(ds, zone, fmt=f".{fmt.lstrip('.')}")
    console.print(f"landed {ds.events.height:,} events for {users:,} users in {n_files:,} files under {zone.url}")
    keys = sorted({k for f in zone.list_files(EVENTS_PREFIX) if (k := partition_key_of(f.key))})
    from orchestration.runner import partition_range_tags

    _run_job_with_progress(
        "ingest_events", f"ingesting {len(keys)} arrival hours", partition_range_tags(keys[0], keys[-1]), verbose
    )
    _run_job_with_progress("training_cycle", "features, training, evaluation, deploy", verbose=verbose)
    _run_batch_sets(verbose=verbose)
    print_summary(console, settings, time.perf_counter() - started)


@app.command()
def train(verbose: VerboseOption = False) -> None:
    """Run the training cycle on the project's ingested events (features, training, evaluation and gate,
    batch recommendations, blue-green deploy), then print the quickstart's summary."""
    from recsys_platform.analytics.summary import print_summary

    started = time.perf_counter()
    settings = _prepare_environment()
    _require_trainable(settings)
    _run_job_with_progress("training_cycle", "features, training, evaluation, deploy", verbose=verbose)
    print_summary(console, settings, time.perf_counter() - started)


def _require_enough_generated(events) -> None:
    """Refuse (exit 2, naming the minimum) a synthetic dataset too small for the training cycle's windows."""
    from recsys_platform.model.windows import InsufficientHistoryError, require_enough

    try:
        require_enough(events)
    except InsufficientHistoryError as exc:
        raise typer.BadParameter(f"{exc}; generate more --users or --days", param_hint="'--users' / '--days'") from None


def _require_trainable(settings: Settings) -> None:
    """Exit 1 with one line, before any run starts, when there are no ingested events or too few to train on
    (the minimum is named): the cycle would otherwise fail several steps in."""
    import polars as pl

    from recsys_platform.deploy_profile import is_s3, polars_s3_options
    from recsys_platform.model.windows import InsufficientHistoryError, require_enough

    source = f"{settings.lake_url.rstrip('/')}/raw_events/*.parquet"
    options = polars_s3_options(settings.s3_endpoint_url) if is_s3(settings.lake_url) else None
    try:
        events = pl.scan_parquet(source, storage_options=options).select("user_id", "event_type")
        require_enough(events)
    except InsufficientHistoryError as exc:
        console.print(f"[red]too little to train on:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    except (FileNotFoundError, OSError, pl.exceptions.ComputeError) as exc:
        console.print(
            f"[red]nothing to train on:[/red] no events ingested under {settings.lake_url} ({type(exc).__name__}); "
            "run `recsys import ... --ingest` (or `recsys quickstart`) first",
            soft_wrap=True,
        )
        raise typer.Exit(1) from None


def _run_batch_sets(shards: list[str] | None = None, verbose: bool = False) -> None:
    """Run `recommendation_sets_batch`: over every user shard in one run (the champion is loaded once) by
    default, else once per shard of `shards`."""
    from orchestration.jobs import SHARD_KEYS
    from orchestration.runner import partition_range_tags

    unknown = [key for key in shards or () if key not in SHARD_KEYS]
    if unknown:  # refused before any shard runs
        raise typer.BadParameter(f"unknown shard(s) {unknown}; shards are {SHARD_KEYS[0]} .. {SHARD_KEYS[-1]}")
    if not shards:
        label = f"recommendation sets, {len(SHARD_KEYS)} shards"
        _run_job_with_progress(
            "recommendation_sets_batch", label, partition_range_tags(SHARD_KEYS[0], SHARD_KEYS[-1]), verbose
        )
        return
    for key in shards:
        _run_job_with_progress(
            "recommendation_sets_batch", f"recommendation sets, shard {key}", {"dagster/partition": key}, verbose
        )


@app.command("batch-sets")
def batch_sets(
    shard: Annotated[list[str] | None, typer.Option(help="User shard to run (repeat); default every shard.")] = None,
    verbose: VerboseOption = False,
) -> None:
    """Batch-score users with the champion, build the recommendation sets and their JSON-lines export."""
    _prepare_environment()
    _run_batch_sets(shard, verbose)


@app.command()
def ui(port: Annotated[int, typer.Option(help="Webserver port.")] = 3000) -> None:
    """Start `dagster dev` on the project's workspace with the project-local DAGSTER_HOME."""
    _prepare_environment()
    os.chdir(PROJECT_ROOT)
    dagster = str(Path(sys.executable).with_name("dagster"))
    os.execv(dagster, [dagster, "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), "-p", str(port)])


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Bind address (other than loopback only with API keys set).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.", min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.", min=1)] = 1,
) -> None:
    """Serve recommendations over HTTP (FastAPI under granian; OpenAPI docs at /docs)."""
    from granian import Granian
    from granian.constants import Interfaces, Loops
    from granian.log import LogLevels

    from recsys_platform.serve.auth import KEY_ENVS, LOOPBACK, ApiKeys, require_keys_for
    from recsys_platform.serve.observability import configure_access_log

    settings = _prepare_environment()
    configure_access_log()
    keys = ApiKeys.of(settings.serve)
    require_keys_for(host, keys)
    if host in LOOPBACK:
        console.print(
            f"serving on http://{host}:{port} (loopback only; to bind another address set "
            f"{KEY_ENVS['ingest']} and {KEY_ENVS['admin']})"
        )
    # granian rather than uvicorn: on 2 cores (benchmarks/serve.py) it answered 15-35% more requests with the same
    # app, and a bare ASGI handler 36,000 req/s against uvicorn + httptools + uvloop's 22,000-24,000. Workers are
    # forked, so they keep the access-log handler configured above.
    Granian(
        "recsys_platform.serve.api:create_app",
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        factory=True,
        loop=Loops.uvloop,
        log_level=LogLevels.warning,
        log_access=False,  # the API writes its own access log (recsys.access)
    ).serve()


@app.command("forget-user")
def forget_user_command(user_id: Annotated[str, typer.Argument(help="The user id to remove everywhere.")]) -> None:
    """Remove a user from the landing zone, the lake, the exports, the online store and the push queue (and so
    from future training), with an audit record that names the user only by a SHA-256 of the id."""
    from recsys_platform.lifecycle import forget_user

    settings = _prepare_environment()
    report = forget_user(user_id, settings)
    where = sorted({k.split(":", 1)[0] for k in report.removed})
    console.print(
        f"forgot user {user_id}: {report.total:,} rows, keys and messages removed from "
        f"{len(report.removed)} places ({', '.join(where) or 'nothing held the user'}); audit id "
        f"{report.user_sha256[:16]}"
    )


@app.command("serve-model")
def serve_model(
    model: Annotated[str, typer.Option(help="Registered version number or alias (champion, challenger).")] = "champion",
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 5001,
) -> None:
    """Serve the registered ranker as an MLflow pyfunc (POST feature rows to /invocations, get scores)."""
    from recsys_platform.model.registry import pyfunc_serve_command

    settings = _prepare_environment()
    argv, env = pyfunc_serve_command(settings.mlflow_tracking_uri, model, host, port)
    console.print(f"serving {argv[4]} from {settings.mlflow_tracking_uri} on http://{host}:{port}/invocations")
    os.execve(argv[0], argv, env)


@app.command()
def simulate(
    rate: Annotated[float, typer.Option(help="Events per second.")] = 10.0,
    via: Annotated[str, typer.Option(help="api (POST /v1/events) or landing (write files directly).")] = "api",
    duration: Annotated[float, typer.Option(help="Seconds to run (0: until Ctrl-C).")] = 60.0,
    url: Annotated[str, typer.Option(help="Base URL of `recsys serve` (for --via api).")] = "http://127.0.0.1:8000",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Stream live events for existing users and items (through the API or into the landing zone)."""
    import polars as pl

    from recsys_platform.dev.simulator import EventStream, api_sender, landing_sender, run_simulation

    settings = _prepare_environment()
    lake = Path(settings.lake_url)
    if not (lake / "users.parquet").exists() or not (lake / "items.parquet").exists():
        raise typer.BadParameter(f"no users/items in the lake at {lake}: run `recsys quickstart` first")
    stream = EventStream(
        pl.read_parquet(lake / "users.parquet", columns=["user_id"])["user_id"].to_list(),
        pl.read_parquet(lake / "items.parquet"),
        seed,
    )
    if via == "api":
        send = api_sender(url)
    elif via == "landing":
        from recsys_platform.serve.events_api import build_collector

        send = landing_sender(build_collector(settings))
    else:
        raise typer.BadParameter("--via must be api or landing")
    console.print(f"streaming ~{rate:g} events/s via {via} for {duration or 'unlimited'} s (Ctrl-C stops)")
    try:
        stats = run_simulation(
            stream,
            send,
            rate,
            duration or None,
            on_batch=lambda s: (
                console.print(f"sent {s.sent:,}, accepted {s.accepted:,}, rejected {s.rejected:,}")
                if s.batches % 10 == 0
                else None
            ),
        )
    except KeyboardInterrupt:
        console.print("stopped")
        return
    console.print(
        f"sent {stats.sent:,} events in {stats.batches:,} batches: accepted {stats.accepted:,}, "
        f"rejected {stats.rejected:,}{f' {stats.reasons}' if stats.reasons else ''}, failed batches {stats.errors:,}"
    )


@app.command("import")
def import_data(
    interactions: Annotated[Path | None, typer.Option(help="Interactions CSV/Parquet (unless --movielens).")] = None,
    items: Annotated[Path | None, typer.Option(help="Items CSV/Parquet (optional).")] = None,
    users: Annotated[Path | None, typer.Option(help="Users CSV/Parquet (optional).")] = None,
    movielens: Annotated[
        Path | None, typer.Option(help="MovieLens: u.data, ratings.csv, or a RecBole directory / .inter file.")
    ] = None,
    user_col: Annotated[str, typer.Option(help="Source column of the user id.")] = "user_id",
    item_col: Annotated[str, typer.Option(help="Source column of the item id.")] = "item_id",
    time_col: Annotated[str, typer.Option(help="Source column of the timestamp (epoch s/ms or ISO).")] = "timestamp",
    event_col: Annotated[str | None, typer.Option(help="Source column of the event type.")] = None,
    weight_col: Annotated[str | None, typer.Option(help="Source column of a weight/rating (if no event type).")] = None,
    event_type: Annotated[list[str] | None, typer.Option(help="Map an event value, e.g. click=content_start.")] = None,
    event_column: Annotated[list[str] | None, typer.Option(help="Event metadata, e.g. session_id=session.")] = None,
    item_column: Annotated[list[str] | None, typer.Option(help="Item metadata, e.g. title=movie_title.")] = None,
    user_column: Annotated[list[str] | None, typer.Option(help="User metadata, e.g. country=cc.")] = None,
    complete_at: Annotated[float, typer.Option(help="Weight at or above which a row is a completion.")] = 4.0,
    start_at: Annotated[float, typer.Option(help="Weight at or above which a row is a start (below: bounce).")] = 3.0,
    rebase_time: Annotated[bool, typer.Option(help="Shift times so the newest event is now (order kept).")] = False,
    keep_history: Annotated[
        bool,
        typer.Option(
            help="Keep event times older than the app launch (RECSYS_APP_LAUNCH, default 2019-01-01): the import "
            "records its earliest event time and ingestion accepts its events back to it. --no-keep-history "
            "refuses such data."
        ),
    ] = True,
    dataset: Annotated[str | None, typer.Option(help="Dataset name (event id prefix); default: file name.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="Landing file format: parquet or jsonl.")] = "parquet",
    ingest: Annotated[bool, typer.Option(help="Then run ingest_events for the landed arrival hour.")] = False,
    verbose: VerboseOption = False,
) -> None:
    """Import interactions (+ items, users) into the landing zone in the native layout; print what became of
    every row (kept, merged as an exact duplicate, refused with a reason)."""
    from recsys_platform.ingest import importer
    from recsys_platform.ingest.landing import landing_zone_from_url

    settings = _prepare_environment()
    zone = landing_zone_from_url(settings.landing_url)
    opts = {
        "thresholds": importer.WeightThresholds(complete_at=complete_at, start_at=start_at),
        "rebase_time": rebase_time,
        "keep_history": keep_history,
        "fmt": f".{fmt.lstrip('.')}",
    }
    try:
        with console.status("importing"):
            if movielens is not None:
                result = importer.import_movielens(zone, movielens, dataset=dataset, **opts)
            elif interactions is not None:
                mapping = importer.ColumnMapping(
                    user_id=user_col,
                    item_id=item_col,
                    timestamp=time_col,
                    event_type=event_col,
                    weight=weight_col,
                    event_columns=importer.parse_pairs(event_column, "--event-column"),
                    item_columns=importer.parse_pairs(item_column, "--item-column"),
                    user_columns=importer.parse_pairs(user_column, "--user-column"),
                )
                types = importer.parse_pairs(event_type, "--event-type")
                result = importer.import_files(
                    zone, interactions, mapping, items, users, dataset, event_types=types, **opts
                )
            else:
                raise importer.DatasetImportError("give --interactions FILE or --movielens PATH")
    except importer.DatasetImportError as exc:
        console.print(f"[red]import failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    shift = f", times shifted by {result.time_shift}" if result.time_shift else ""
    console.print(
        f"landed {result.dataset}: {result.events:,} events, {result.items:,} items, {result.users:,} users "
        f"in {len(result.files)} files under {zone.url} (arrival hour {result.partition_key}{shift})"
    )
    refused = sum(result.refused.values())
    console.print(
        f"rows: {result.rows_in:,} read, {result.kept:,} kept, {result.merged:,} merged (exact duplicates), "
        f"{refused:,} refused; earliest event {result.earliest_event_time:%Y-%m-%d %H:%M:%S} UTC, "
        f"recorded in {result.manifest_key}"
    )
    if refused:
        reasons = ", ".join(f"{n:,} {reason}" for reason, n in result.refused.items())
        console.print(f"[yellow]refused:[/yellow] {reasons}; each row with its reason in {result.refused_file}")
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    if ingest:
        from orchestration.runner import partition_range_tags

        tags = partition_range_tags(result.partition_key, result.partition_key)
        run = _run_job_with_progress("ingest_events", f"ingesting {result.partition_key}", tags, verbose)
        _print_ingested(run)
    else:
        console.print(f"next: materialize raw_events for {result.partition_key} (`recsys ui`, or re-run with --ingest)")


def _print_ingested(run: object) -> None:
    """One line from raw_events' metadata: rows in, valid, duplicates, quarantined by reason."""
    meta = run.asset_materializations_for_node("raw_events")[0].metadata  # type: ignore[attr-defined]
    reasons = meta["quarantine_reasons"].value or {}
    by_reason = f" ({', '.join(f'{n:,} {r}' for r, n in sorted(reasons.items()))})" if reasons else ""
    console.print(
        f"ingested: {meta['rows_in'].value:,} rows, {meta['valid'].value:,} valid, "
        f"{meta['duplicates'].value:,} duplicates, {meta['quarantined'].value:,} quarantined{by_reason}"
    )


@deploy_app.command("status")
def deploy_status() -> None:
    """Show the pointer and both slots of the online store."""
    from recsys_platform.serve.deployment import status
    from recsys_platform.serve.online_store import open_online_store

    settings = _prepare_environment()
    with open_online_store(settings.online_store_url, create=False) as store:
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
def deploy_rollback(
    to_version: Annotated[str | None, typer.Option(help="Serve this model version (a no-op if it is served).")] = None,
    from_version: Annotated[
        str | None, typer.Option(help="Leave this model version, which must be the one served now.")
    ] = None,
) -> None:
    """Point reads at the other slot, named by its target so a retry never flips back."""
    from recsys_platform.serve.deployment import rollback
    from recsys_platform.serve.online_store import open_online_store

    if (to_version is None) == (from_version is None):
        raise typer.BadParameter("name the target: --to-version VERSION or --from-version VERSION (see deploy status)")
    settings = _prepare_environment()
    started = time.perf_counter()
    with open_online_store(settings.online_store_url, create=False) as store:
        pointer = rollback(store, to_version=to_version, from_version=from_version)
    elapsed = (time.perf_counter() - started) * 1000
    console.print(f"active slot is now {pointer.active_slot} (model {pointer.model_version}) after {elapsed:.1f} ms")


@benchmark_app.command("quality")
def benchmark_quality(
    path: Annotated[
        Path | None,
        typer.Option(help="MovieLens u.data, ratings.csv or RecBole dir / .inter (default: fetch RecBole's ml-100k)."),
    ] = None,
    interactions: Annotated[
        Path | None, typer.Option(help="A generic CSV/Parquet interactions file instead (columns as `recsys import`).")
    ] = None,
    user_col: Annotated[str, typer.Option(help="--interactions: column of the user id.")] = "user_id",
    item_col: Annotated[str, typer.Option(help="--interactions: column of the item id.")] = "item_id",
    time_col: Annotated[str, typer.Option(help="--interactions: column of the timestamp.")] = "timestamp",
    weight_col: Annotated[str | None, typer.Option(help="--interactions: column of a weight/rating.")] = None,
    event_col: Annotated[str | None, typer.Option(help="--interactions: column of the event type.")] = None,
    event_type: Annotated[
        list[str] | None, typer.Option(help="--interactions: map an event, e.g. click=content_start.")
    ] = None,
    protocol: Annotated[
        list[str] | None, typer.Option(help="per-user (default), global or random (repeatable).")
    ] = None,
    seed: Annotated[
        list[int] | None,
        typer.Option(
            help="random protocol split seeds (repeatable; default 1). 42-44 were used in development: report others."
        ),
    ] = None,
    users: Annotated[int | None, typer.Option(min=1, help="Measure a seeded sample of this many users.")] = None,
    env: Annotated[
        list[str] | None, typer.Option(help="Setting for the product's processes, e.g. RECSYS_TOP_N=100.")
    ] = None,
    work_dir: Annotated[
        Path | None, typer.Option(help="Keep homes, train files and logs here (default: removed).")
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write every figure to this JSON file.")] = None,
) -> None:
    """Real-data quality through the product: split, `recsys import --ingest` + `recsys train` per split, score
    what the API serves against the held-out rows beside popularity, recent popularity, item-kNN and EASE."""
    import json
    import logging

    from rich.logging import RichHandler

    from recsys_platform.ingest.importer import DatasetImportError, parse_pairs
    from recsys_platform.quality_benchmark.holdout import PROTOCOLS, TableColumns
    from recsys_platform.quality_benchmark.run import (
        DEFAULT_SEEDS,
        BenchmarkRunError,
        QualityConfig,
        format_tables,
        run_quality_benchmark,
    )

    if path is not None and interactions is not None:
        raise typer.BadParameter("give --path (MovieLens) or --interactions (a table), not both")
    unknown = [p for p in protocol or () if p not in PROTOCOLS]
    if unknown:
        raise typer.BadParameter(f"unknown protocol(s) {unknown}; expected {list(PROTOCOLS)}", param_hint="--protocol")
    try:
        product_env = parse_pairs(env, "--env")
    except DatasetImportError as exc:
        raise typer.BadParameter(str(exc), param_hint="--env") from None
    config = QualityConfig(
        path=interactions or path,
        columns=TableColumns(user_col, item_col, time_col) if interactions else None,
        weight_col=weight_col,
        event_col=event_col,
        event_types=tuple(event_type or ()),
        protocols=tuple(protocol or ("per-user",)),
        seeds=tuple(seed or DEFAULT_SEEDS),
        users=users,
        product_env=product_env,
        work_dir=work_dir,
    )
    handler = RichHandler(console=console, show_path=False)
    package = logging.getLogger("recsys_platform")
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    try:
        with console.status("measuring through the product (import, train, serve per split)"):
            result = run_quality_benchmark(config, command=sys.argv)
    except BenchmarkRunError as exc:
        console.print(f"[red]benchmark failed:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        package.removeHandler(handler)
    console.print(format_tables(result), markup=False, highlight=False, soft_wrap=True)
    if json_path:
        json_path.write_text(json.dumps(result, indent=2, default=str))
        console.print(f"every figure in {json_path}")


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
    main()
