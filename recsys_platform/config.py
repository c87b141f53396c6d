"""Settings: every path, URL and tunable of the platform, read from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from recsys_platform.model.params import ModelParams

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXPECTATIONS_DIR = PROJECT_ROOT / "expectations"

REGISTERED_MODEL_NAME = "recsys-ranker"
CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"
# The model version recorded on lists served by the popularity fallback (no champion yet).
POPULARITY_VERSION = "popularity-baseline"

# Environment variables read here and interpreted elsewhere (their names appear in that module's error messages).
EXECUTOR_ENV = "RECSYS_EXECUTOR"
MAX_CONCURRENT_ENV = "RECSYS_MAX_CONCURRENT"
POOL_LIMIT_ENV = "RECSYS_POOL_LIMIT"
CELERY_BROKER_ENV = "RECSYS_CELERY_BROKER_URL"
CELERY_BACKEND_ENV = "RECSYS_CELERY_BACKEND_URL"
CELERY_KEY_PREFIX_ENV = "RECSYS_CELERY_KEY_PREFIX"
CELERY_QUEUE_ENV = "RECSYS_CELERY_QUEUE"
RETENTION_PATH_ENV = "RECSYS_RETENTION"
APP_LAUNCH_ENV = "RECSYS_APP_LAUNCH"
ALERT_URL_ENV = "RECSYS_ALERT_URL"
SENSOR_STATUS_ENV = "RECSYS_LANDING_SENSOR"
# The serving API's keys and switches (`ServeSettings`); `serve.auth` names the key variables in its refusals.
API_KEY_ENVS = {"ingest": "RECSYS_INGEST_API_KEY", "admin": "RECSYS_ADMIN_API_KEY", "read": "RECSYS_READ_API_KEY"}
INGEST_RATE_ENV = "RECSYS_INGEST_RATE"
INGEST_LINGER_ENV = "RECSYS_INGEST_LINGER_MS"
ACCESS_LOG_ENV = "RECSYS_ACCESS_LOG"
SERVED_LOG_ENV = "RECSYS_SERVED_LOG"


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _number(env: Mapping[str, str], name: str, default: float, unit: str) -> float:
    """A number from `env` (`default` when unset); ValueError naming the variable and its `unit`."""
    raw = env.get(name, "").strip()
    try:
        return float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number of {unit}") from None


def fields_of(cls: type) -> list[str]:
    """Names of a dataclass's fields."""
    return list(cls.__dataclass_fields__)


@dataclass(frozen=True)
class PipelineParams:
    """Tunables of the pipeline (list sizes, sampling, seeds, the gate's margin). The model's windows and
    source settings are not here: the training cycle derives them from the data (`model.procedure`)."""

    top_n: int = 50
    candidates_per_source: int = 50
    # Days after a completion during which the item is not recommended again (0: off). Half a day: what was
    # just finished leaves the list (the near-real-time refresh), and last night's sleep story may come back
    # tonight. On the cycle's own holdouts of a development seed (synthetic latent, seed 11, 5,000 users x 28
    # days), ranker nDCG@10 per-user / global: 3 days (the old default) 0.3750 / 0.3012, half a day 0.3820 /
    # 0.3527, off 0.3829 / 0.3651. People replay what they finished; the repeat-listen cap (max_replays) still
    # limits how many replays a list holds.
    recent_exclusion_days: float = 0.5
    watermark_minutes: int = 10
    seed: int = 7
    # One thread by default: on a 2-core box shared with the daemon, API and other runs, two OpenMP
    # threads made LambdaRank training ~4x slower than one (measured 85 s vs 22 s under load).
    ranker_threads: int = 1
    promotion_margin: float = 0.0
    # The ranker is promoted only if its nDCG@10 on the gate's holdout beats the best rival list by more than this
    # many standard errors of the per-user gap between the two (`model.gate`): a holdout of a few hundred users
    # cannot tell two close lists apart, and then the simpler list is served. 0: any lead promotes (the rule before).
    # 2 was chosen from 0 / 1 / 2 on development splits only (`model.gate` has the figures).
    promotion_z: float = 2.0
    max_training_users: int = 4000
    # Users whose histories the gate's holdouts fit and score on (a seeded sample above it; 0: all). The holdouts
    # judge the procedure, ranker against baselines fitted on the same rows, so a sample is a fair judge, and it
    # keeps the step's time and memory flat as the user base grows: at 1M users (98.5M events) fitting both
    # protocols on every history passed 18 GiB (benchmarks/scale.py); this sample took 221-239 s and 3.5-7.0 GiB there.
    max_holdout_users: int = 100_000
    # Users whose histories model_params and training_set fit on (a seeded sample above it; 0: all), each standing
    # for (users / sample) users (`PairHistory.user_weight`): item counts and co-occurrences are estimated at the
    # whole base's scale, so the features the ranker learns on mean what they mean when `recommendations` serves
    # everyone. The ranker's labels come from at most `label_users` users per window anyway; at 1M users, fitting
    # every source on each window's whole history took 140-150 s per window and held 16 GiB (benchmarks/scale.py).
    max_fit_users: int = 100_000
    # What the ranker learns to predict (model.params.ModelParams.training_windows): each user's next
    # interactions and the newest ones in time by default; "+session" adds each user's newest sitting (where session
    # signals are learned, see model.candidates.KEPT_SESSION_GROUPS); "random" for data whose order carries no meaning.
    training_windows: str = "temporal+global3+session"
    # The search features' text encoder (`model.text`): a hashed bag of words by default (as good as MiniLM on the
    # synthetic searches, see model.text), "minilm" for all-MiniLM-L6-v2 (the [embeddings] extra), "auto" for
    # MiniLM when the extra is installed. A model version keeps its own.
    text_encoder: str = "hashed"
    # The repeat-listen policy of the served lists (batch and near-real-time alike, `batch.rules.limit_replays`):
    # at most `max_replays` items the user already played in the first `replay_window` (favourites exempt);
    # -1 turns it off. The recommendation sets apply it as their `max_replays` rule. 4: on a development seed
    # (synthetic latent, seed 11, 5,000 users x 28 days; `benchmarks/synthetic_plays.py --seed 11` then
    # `benchmarks/quality.py --interactions ... --env RECSYS_MAX_REPLAYS=n`), the served lists as shown against the
    # users' own replays, nDCG@10 per-user / global: 3 0.4128 / 0.3382, 4 0.4239 / 0.3460, 5 0.4298 / 0.3507, off
    # 0.4360 / 0.3540, own replays 0.4140 / 0.3379. The smallest cap whose lists clearly beat a user's own replays on
    # both holdouts (3 only tied): a tighter cap trades what users measurably come back for against variety.
    max_replays: int = 4
    replay_window: int = 10
    # Event-driven push: a near-real-time refresh queues a push for the users whose top recommendation it changed
    # or whose events fire a push rule (`push.selection`), with the caps, quiet hours, opt-out and dedup of the
    # push rules; RECSYS_PUSH_ON_REFRESH=0 leaves pushes to the push_notifications asset.
    push_on_refresh: bool = True

    def model_params(self) -> ModelParams:
        """The starting point of the model's params (the cycle fills in the data-dependent ones)."""
        from recsys_platform.model.params import ModelParams

        return ModelParams(
            depth=self.candidates_per_source,
            seed=self.seed,
            recent_completion_days=float(self.recent_exclusion_days),
            training_windows=self.training_windows,
            text_encoder=self.text_encoder,
        )

    @classmethod
    def from_env(cls) -> PipelineParams:
        """Build params, letting RECSYS_<FIELD> environment variables override defaults."""
        kwargs = {}
        for name, f in cls.__dataclass_fields__.items():
            raw = os.environ.get(f"RECSYS_{name.upper()}")
            if raw and isinstance(f.default, bool):
                if raw.strip().lower() not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(f"RECSYS_{name.upper()}={raw!r}: expected 1/0, true/false, yes/no or on/off")
                kwargs[name] = raw.strip().lower() in ("1", "true", "yes", "on")
            elif raw:
                kwargs[name] = type(f.default)(raw)
        return cls(**kwargs)


@dataclass(frozen=True)
class ExecutorEnv:
    """The executor and Celery settings as written in the environment, empty when unset;
    `deploy_profile.executor_settings` and `celery_app_settings` validate them and fill in the defaults."""

    kind: str = ""
    max_concurrent: str = ""
    celery_broker_url: str = ""
    celery_backend_url: str = ""
    celery_key_prefix: str = ""
    celery_queue: str = ""
    pool_limit: str = ""

    @classmethod
    def from_env(cls) -> ExecutorEnv:
        """Read RECSYS_EXECUTOR, RECSYS_MAX_CONCURRENT, RECSYS_CELERY_* and RECSYS_POOL_LIMIT."""
        names = (EXECUTOR_ENV, MAX_CONCURRENT_ENV, CELERY_BROKER_ENV, CELERY_BACKEND_ENV)
        names += (CELERY_KEY_PREFIX_ENV, CELERY_QUEUE_ENV, POOL_LIMIT_ENV)
        return cls(*(os.environ.get(name, "").strip() for name in names))


def _keys(raw: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in raw.split(",") if k.strip())


@dataclass(frozen=True)
class ServeSettings:
    """The serving API's keys and switches (`recsys_platform.serve`): empty key lists leave a scope without keys."""

    # The keys each scope accepts, comma-separated in the environment so a new key can be added before the old
    # one is removed (rotation); `serve.auth` says what an empty list means for each scope.
    ingest_api_keys: tuple[str, ...] = ()
    admin_api_keys: tuple[str, ...] = ()
    read_api_keys: tuple[str, ...] = ()
    # Requests per second per key on POST /v1/events (a burst of twice as many): far above an app backend that
    # batches its events (up to 500 per request), far below a flood of one-record requests. 0 turns the limit off.
    ingest_rate: float = 50.0
    # How long the event collector waits for other requests to share a landing file: many clients posting at once
    # write one file per linger, not one per request, for 50 ms more per answer.
    ingest_linger_ms: float = 50.0
    # One JSON access-log line per request (`serve.observability`).
    access_log: bool = True
    # The served log of every list the API returns (`serve.served_log`).
    served_log: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ServeSettings:
        """Read API_KEY_ENVS, RECSYS_INGEST_RATE, RECSYS_INGEST_LINGER_MS, RECSYS_ACCESS_LOG and RECSYS_SERVED_LOG
        (a switch is off only when set to 0)."""
        return cls(
            ingest_api_keys=_keys(env.get(API_KEY_ENVS["ingest"], "")),
            admin_api_keys=_keys(env.get(API_KEY_ENVS["admin"], "")),
            read_api_keys=_keys(env.get(API_KEY_ENVS["read"], "")),
            ingest_rate=_number(env, INGEST_RATE_ENV, cls.ingest_rate, "requests per second"),
            ingest_linger_ms=_number(env, INGEST_LINGER_ENV, cls.ingest_linger_ms, "milliseconds"),
            access_log=env.get(ACCESS_LOG_ENV, "1") != "0",
            served_log=env.get(SERVED_LOG_ENV, "1") != "0",
        )


@dataclass(frozen=True)
class Settings:
    """Where everything lives. The profile is chosen by environment variables only."""

    home: Path
    landing_url: str
    lake_url: str
    catalog_path: Path
    mlflow_tracking_uri: str
    mlflow_artifact_uri: str
    online_store_url: str
    push_queue_url: str
    dagster_home: Path
    partition_start: str
    s3_endpoint_url: str | None
    params: PipelineParams = field(default_factory=PipelineParams)
    recommendation_sets_path: Path = PROJECT_ROOT / "config" / "recommendation_sets.yaml"
    executor: ExecutorEnv = field(default_factory=ExecutorEnv)
    retention_path: Path = PROJECT_ROOT / "config" / "retention.yaml"
    # ISO date or time; empty: the ingestion's own default (`ingest.ingestion.app_launch`).
    app_launch: str = ""
    # Where failed-run alerts go (`alerts.notifier_from_url`); empty: an ERROR log line.
    alert_url: str = ""
    # Whether the landing sensor (the near-real-time refresh) starts switched on.
    landing_sensor_running: bool = False
    serve: ServeSettings = field(default_factory=ServeSettings)

    @classmethod
    def from_env(cls) -> Settings:
        """Resolve settings from RECSYS_* / MLFLOW_* / DAGSTER_HOME environment variables."""
        home = Path(_env("RECSYS_HOME", str(Path.cwd() / ".recsys"))).resolve()
        return cls(
            home=home,
            landing_url=_env("RECSYS_LANDING_URL", str(home / "landing")),
            lake_url=_env("RECSYS_LAKE_URL", str(home / "lake")),
            catalog_path=Path(_env("RECSYS_CATALOG_PATH", str(home / "catalog.duckdb"))),
            mlflow_tracking_uri=_env("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}"),
            mlflow_artifact_uri=_env("RECSYS_MLFLOW_ARTIFACTS", (home / "mlartifacts").as_uri()),
            online_store_url=_env("RECSYS_ONLINE_STORE_URL", f"sqlite:///{home / 'online_store.sqlite'}"),
            push_queue_url=_env("RECSYS_PUSH_QUEUE_URL", f"sqlite:///{home / 'push_queue.sqlite'}"),
            dagster_home=Path(_env("DAGSTER_HOME", str(home / "dagster"))),
            partition_start=_env("RECSYS_PARTITION_START", "2026-01-01-00:00"),
            s3_endpoint_url=os.environ.get("RECSYS_S3_ENDPOINT_URL") or None,
            params=PipelineParams.from_env(),
            recommendation_sets_path=Path(
                _env("RECSYS_RECOMMENDATION_SETS", str(PROJECT_ROOT / "config" / "recommendation_sets.yaml"))
            ),
            executor=ExecutorEnv.from_env(),
            retention_path=Path(_env(RETENTION_PATH_ENV, str(PROJECT_ROOT / "config" / "retention.yaml"))),
            app_launch=_env(APP_LAUNCH_ENV, ""),
            alert_url=os.environ.get(ALERT_URL_ENV, ""),
            landing_sensor_running=_env(SENSOR_STATUS_ENV, "").lower() in ("running", "on", "1", "true"),
            serve=ServeSettings.from_env(),
        )

    @property
    def exports_dir(self) -> Path:
        """Where batch exports (JSON lines) are written: RECSYS_HOME/exports."""
        return self.home / "exports"

    def ensure_local_dirs(self) -> None:
        """Create the local directories of the embedded default (no-op for remote URLs)."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.dagster_home.mkdir(parents=True, exist_ok=True)
        for url in (self.landing_url, self.lake_url):
            if "://" not in url:
                Path(url).mkdir(parents=True, exist_ok=True)
