"""A/B/n experiments: deterministic bucketing, exposure logging and the per-arm analysis.

A user's arm is a pure function of sha256(experiment name + user id) and the arm weights, so
every process, shard and day agrees on it. A user is exposed at their first app open inside the
experiment window (the surface is on the home screen). Outcomes are measured from exposure to
the end of the window: distinct days with a completion, completion within 24 hours, content
starts. Each treatment arm is compared with control: Welch's t-test for the means and a
two-proportion z-test for the 24-hour completion rate, with 95% confidence intervals.
"""

from __future__ import annotations

import base64
import io
import logging
import math
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from recsys_platform.batch.set_config import ExperimentConfig
from recsys_platform.hashing import unit_interval
from recsys_platform.model import evaluation
from recsys_platform.schemas import ANALYSIS_SCHEMA, EXPOSURE_SCHEMA

logger = logging.getLogger(__name__)

TS = pl.Datetime("us", "UTC")
METRICS: dict[str, str] = {
    "completion_days": "distinct days with a completion after exposure (per user)",
    "completed_24h": "completed something within 24 hours of exposure (rate)",
    "content_starts": "content starts after exposure (per user)",
}
# Outcomes of what was served, measured on the served log's lists (only where the experiment has them).
SERVED_METRICS: dict[str, str] = {
    "ctr_24h": "started an item of a list served to them within 24 hours of that list (rate)",
    "served_ndcg@10": "nDCG@10 of the first list served to them against the items they started after it",
    "repeat_share": "share of the first served list's items they had played before it",
}
PROPORTION_METRICS = ("completed_24h", "ctr_24h")


def assign_arms(user_ids: pl.Series | list[str], experiment: ExperimentConfig) -> pl.DataFrame:
    """Each user's arm: sha256(experiment name + user id) mapped onto the cumulative arm weights."""
    ids = list(user_ids)
    arms = list(experiment.arms)
    weights = np.array([experiment.arms[a] for a in arms], dtype=float)
    edges = np.cumsum(weights / weights.sum())
    u = unit_interval(ids, salt=f"{experiment.name}:")
    idx = np.minimum(np.searchsorted(edges, u, side="right"), len(arms) - 1)
    return pl.DataFrame({"user_id": pl.Series(ids, dtype=pl.String), "arm": np.array(arms)[idx]})


def arm_of(user_id: str, experiment: ExperimentConfig) -> str:
    """One user's arm, as `assign_arms` gives it (the same hash and edges), without building frames: for the
    read path, where it runs per request."""
    arms = list(experiment.arms)
    total = sum(experiment.arms.values())
    u = float(unit_interval([user_id], salt=f"{experiment.name}:")[0])
    edge = 0.0
    for arm in arms:
        edge += experiment.arms[arm] / total
        if u < edge:
            return arm
    return arms[-1]


def is_live(experiment: ExperimentConfig, now: datetime) -> bool:
    """Whether `experiment` assigns arms at `now` (API and batch sets): from its start for duration_days, or
    always without a start (the analysis then reads the last duration_days of events)."""
    if experiment.start is None:
        return True
    start = datetime.fromisoformat(experiment.start)
    start = start if start.tzinfo else start.replace(tzinfo=now.tzinfo)
    return start <= now < start + timedelta(days=experiment.duration_days)


def experiment_window(experiment: ExperimentConfig, latest_event: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the experiment: the configured start (or `duration_days` before the latest event)."""
    end = latest_event + timedelta(microseconds=1)
    if experiment.start is None:
        return end - timedelta(days=experiment.duration_days), end
    start = datetime.fromisoformat(experiment.start)
    start = start if start.tzinfo else start.replace(tzinfo=end.tzinfo)
    return start, min(end, start + timedelta(days=experiment.duration_days))


def log_exposures(
    events: pl.DataFrame | pl.LazyFrame, experiment: ExperimentConfig, start: datetime, end: datetime
) -> pl.DataFrame:
    """One exposure per user: their first app open in [start, end), with the user's arm."""
    lo, hi = pl.lit(start, dtype=TS), pl.lit(end, dtype=TS)
    first = (
        events.lazy()
        .filter((pl.col("event_type") == "app_open") & (pl.col("event_time") >= lo) & (pl.col("event_time") < hi))
        .group_by("user_id")
        .agg(exposed_at=pl.col("event_time").min())
        .collect()
        .sort("user_id")
    )
    arms = assign_arms(first["user_id"], experiment)
    return first.join(arms, on="user_id", how="left").select(
        experiment=pl.lit(experiment.name),
        user_id="user_id",
        arm="arm",
        surface=pl.lit(experiment.surface),
        exposed_at="exposed_at",
    )


def served_exposures(
    served: pl.DataFrame | pl.LazyFrame, experiment: ExperimentConfig, start: datetime, end: datetime
) -> pl.DataFrame:
    """One exposure per user from the served log: the first time the API served them the experiment's surface
    in [start, end), with the arm recorded then (what the user actually saw, not a proxy)."""
    lf = served.lazy()
    if "experiment" not in lf.collect_schema().names():
        return pl.DataFrame(schema=EXPOSURE_SCHEMA)
    lo, hi = pl.lit(start, dtype=TS), pl.lit(end, dtype=TS)
    return (
        lf.filter(
            (pl.col("experiment") == experiment.name)
            & (pl.col("surface") == experiment.surface)
            & (pl.col("served_at") >= lo)
            & (pl.col("served_at") < hi)
        )
        .sort("served_at")
        .group_by("user_id")
        .agg(arm=pl.col("arm").first(), exposed_at=pl.col("served_at").first())
        .select(
            experiment=pl.lit(experiment.name),
            user_id="user_id",
            arm="arm",
            surface=pl.lit(experiment.surface),
            exposed_at="exposed_at",
        )
        .sort("user_id")
        .collect()
    )


def user_outcomes(exposures: pl.DataFrame, interactions: pl.DataFrame, end: datetime) -> pl.DataFrame:
    """Per exposed user: completion days, completed within 24 h, content starts (from exposure to `end`)."""
    after = (
        interactions.lazy()
        .join(exposures.lazy().select("user_id", "exposed_at"), on="user_id", how="inner")
        .filter((pl.col("event_time") >= pl.col("exposed_at")) & (pl.col("event_time") < pl.lit(end, dtype=TS)))
        .group_by("user_id")
        .agg(
            completion_days=pl.col("event_time")
            .filter(pl.col("event_type") == "content_complete")
            .dt.date()
            .n_unique(),
            completed_24h=(
                (pl.col("event_type") == "content_complete")
                & (pl.col("event_time") < pl.col("exposed_at") + pl.duration(hours=24))
            ).any(),
            content_starts=(pl.col("event_type") == "content_start").sum(),
        )
        .collect()
    )
    return (
        exposures.select("experiment", "user_id", "arm")
        .join(after, on="user_id", how="left")
        .with_columns(
            completion_days=pl.col("completion_days").fill_null(0).cast(pl.Float64),
            completed_24h=pl.col("completed_24h").fill_null(False).cast(pl.Float64),
            content_starts=pl.col("content_starts").fill_null(0).cast(pl.Float64),
        )
    )


def served_outcomes(
    exposures: pl.DataFrame,
    served: pl.DataFrame | pl.LazyFrame,
    interactions: pl.DataFrame | pl.LazyFrame,
    experiment: ExperimentConfig,
    end: datetime,
) -> pl.DataFrame:
    """Per exposed user, `SERVED_METRICS` of the lists the API served them on the experiment's surface from their
    exposure to `end`, against their content starts in `interactions` (before and after): whether they started a
    served item within 24 h of the list that held it, the first list's nDCG@10 against what they started after it
    (0 when nothing), and the share of its items they had played before it. Empty, without reading
    `interactions`, when the served log holds no list of the experiment."""
    empty = pl.DataFrame(schema={"user_id": pl.String, **{m: pl.Float64 for m in SERVED_METRICS}})
    lf = served.lazy()
    if "experiment" not in lf.collect_schema().names():
        return empty
    lists = (
        lf.filter((pl.col("experiment") == experiment.name) & (pl.col("surface") == experiment.surface))
        .join(exposures.lazy().select("user_id", "exposed_at"), on="user_id", how="inner")
        .filter((pl.col("served_at") >= pl.col("exposed_at")) & (pl.col("served_at") < pl.lit(end, dtype=TS)))
        .select("user_id", "served_at", "item_ids")
        .collect()
    )
    if lists.height == 0:
        return empty
    # One scan of the exposed users' content starts (the filters and the semi join reach the Parquet reader).
    starts = (
        interactions.lazy()
        .filter((pl.col("event_type") == "content_start") & (pl.col("event_time") < pl.lit(end, dtype=TS)))
        .select("user_id", "item_id", "event_time")
        .join(lists.lazy().select("user_id").unique(), on="user_id", how="semi")
        .collect()
        .lazy()
    )
    shown = lists.lazy().explode("item_ids").rename({"item_ids": "item_id"}).drop_nulls("item_id")
    clicked = (
        shown.join(starts, on=["user_id", "item_id"], how="inner")
        .filter(
            (pl.col("event_time") >= pl.col("served_at"))
            & (pl.col("event_time") < pl.col("served_at") + pl.duration(hours=24))
        )
        .select("user_id")
        .unique()
        .with_columns(ctr_24h=pl.lit(1.0))
    )
    first = (
        lists.lazy()
        .sort("served_at")
        .group_by("user_id")
        .agg(pl.col("served_at").first(), pl.col("item_ids").first())
        .explode("item_ids")
        .rename({"item_ids": "item_id"})
        .with_columns(rank=pl.int_range(1, pl.len() + 1).over("user_id"))
        .filter(pl.col("rank") <= 10)
    )
    at = first.select("user_id", "served_at").unique().join(starts, on="user_id", how="inner")
    later = at.filter(pl.col("event_time") >= pl.col("served_at")).select("user_id", "item_id").unique()
    before = at.filter(pl.col("event_time") < pl.col("served_at")).select("user_id", "item_id").unique()
    repeat = (
        first.join(before.with_columns(played=pl.lit(True)), on=["user_id", "item_id"], how="left")
        .group_by("user_id")
        .agg(repeat_share=pl.col("played").fill_null(False).mean())
    )
    ndcg = evaluation.ndcg_per_user(later.collect(), first.select("user_id", "item_id", "rank").collect(), 10)
    return (
        lists.select("user_id")
        .unique()
        .lazy()
        .join(clicked, on="user_id", how="left")
        .join(ndcg.lazy().rename({"ndcg": "served_ndcg@10"}), on="user_id", how="left")
        .join(repeat, on="user_id", how="left")
        .select(
            "user_id",
            pl.col("ctr_24h").fill_null(0.0),
            pl.col("served_ndcg@10").fill_null(0.0),
            pl.col("repeat_share").cast(pl.Float64).fill_null(0.0),
        )
        .sort("user_id")
        .collect()
    )


def mean_ci(values: np.ndarray, proportion: bool = False, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and its confidence interval: Student t for means, normal (Wald) for proportions."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if proportion:
        half = stats.norm.ppf(0.5 + level / 2) * math.sqrt(mean * (1 - mean) / n)
    elif n < 2:
        return mean, math.nan, math.nan
    else:
        half = stats.t.ppf(0.5 + level / 2, n - 1) * values.std(ddof=1) / math.sqrt(n)
    return mean, mean - half, mean + half


def welch_test(treat: np.ndarray, control: np.ndarray, level: float = 0.95) -> tuple[float, float, float, float]:
    """Difference of means, its Welch-Satterthwaite CI and the two-sided Welch t-test p-value."""
    from scipy import stats

    diff = float(treat.mean() - control.mean())
    v1, v2 = treat.var(ddof=1) / len(treat), control.var(ddof=1) / len(control)
    se = math.sqrt(v1 + v2)
    if se == 0:
        return diff, diff, diff, 1.0 if diff == 0 else 0.0
    dof = (v1 + v2) ** 2 / (v1**2 / (len(treat) - 1) + v2**2 / (len(control) - 1))
    half = stats.t.ppf(0.5 + level / 2, dof) * se
    p = float(stats.ttest_ind(treat, control, equal_var=False).pvalue)
    return diff, diff - half, diff + half, p


def two_proportion_test(
    treat: np.ndarray, control: np.ndarray, level: float = 0.95
) -> tuple[float, float, float, float]:
    """Difference of rates, its unpooled normal CI and the pooled two-proportion z-test p-value."""
    from scipy import stats

    n1, n2 = len(treat), len(control)
    p1, p2 = float(treat.mean()), float(control.mean())
    pooled = (treat.sum() + control.sum()) / (n1 + n2)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    z_crit = stats.norm.ppf(0.5 + level / 2)
    p = 1.0 if se_pooled == 0 else float(2 * stats.norm.sf(abs(p1 - p2) / se_pooled))
    return p1 - p2, p1 - p2 - z_crit * se, p1 - p2 + z_crit * se, p


def srm_p_value(sizes: dict[str, int], weights: dict[str, float]) -> float:
    """Sample-ratio mismatch: the chi-square goodness-of-fit p-value of the arms' sizes against their weights
    (a tiny p-value means the bucketing or the exposure logging is broken, and no difference can be trusted)."""
    from scipy import stats

    arms = [a for a in weights if a in sizes]
    observed = np.array([sizes[a] for a in arms], dtype=float)
    if len(arms) < 2 or observed.sum() == 0:
        return math.nan
    share = np.array([weights[a] for a in arms], dtype=float)
    expected = observed.sum() * share / share.sum()
    return float(stats.chisquare(observed, expected).pvalue)


def minimum_detectable_effect(
    control: np.ndarray, n_treat: int, proportion: bool, alpha: float = 0.05, power: float = 0.8
) -> float:
    """The smallest absolute difference vs control that a two-sided test at `alpha` detects with `power`,
    for these arm sizes and the control's variance (p(1-p) for a rate)."""
    from scipy import stats

    n1 = len(control)
    if n1 < 2 or n_treat < 2:
        return math.nan
    var = float(control.mean() * (1 - control.mean())) if proportion else float(control.var(ddof=1))
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return float(z * math.sqrt(var * (1 / n1 + 1 / n_treat)))


def analyze(
    outcomes: pl.DataFrame, control: str, alpha: float = 0.05, weights: dict[str, float] | None = None
) -> pl.DataFrame:
    """Per metric and arm: n, mean, 95% CI, difference vs control with its CI, p-value, the minimum detectable
    effect at 80% power, and (with the arms' `weights`) the sample-ratio-mismatch p-value (ANALYSIS_SCHEMA)."""
    rows = []
    experiment = outcomes["experiment"][0] if outcomes.height else ""
    arms = sorted(outcomes["arm"].unique().to_list(), key=lambda a: (a != control, a))
    sizes = dict(outcomes.group_by("arm").len().iter_rows())
    srm = srm_p_value(sizes, weights) if weights else math.nan
    for metric in [m for m in {**METRICS, **SERVED_METRICS} if m in outcomes.columns]:
        prop = metric in PROPORTION_METRICS
        base = outcomes.filter(pl.col("arm") == control)[metric].to_numpy()
        for arm in arms:
            values = outcomes.filter(pl.col("arm") == arm)[metric].to_numpy()
            mean, lo, hi = mean_ci(values, proportion=prop)
            diff = dlo = dhi = p = mde = math.nan
            test = None
            if arm != control and len(values) > 1 and len(base) > 1:
                test = "two_proportion_z" if prop else "welch_t"
                diff, dlo, dhi, p = (two_proportion_test if prop else welch_test)(values, base)
                mde = minimum_detectable_effect(base, len(values), prop, alpha)
            rows.append(
                {
                    "experiment": experiment,
                    "metric": metric,
                    "arm": arm,
                    "n": len(values),
                    "mean": mean,
                    "ci_low": lo,
                    "ci_high": hi,
                    "diff_vs_control": diff,
                    "diff_ci_low": dlo,
                    "diff_ci_high": dhi,
                    "p_value": p,
                    "test": test,
                    "significant": bool(test is not None and p < alpha),
                    "mde": mde,
                    "srm_p_value": srm,
                }
            )
    return pl.DataFrame(rows, schema=ANALYSIS_SCHEMA)


def plot_analysis(table: pl.DataFrame) -> bytes:
    """PNG of each metric's per-arm mean with its 95% CI (one panel per metric)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in METRICS if m in table["metric"].to_list()]
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(4.2 * max(len(metrics), 1), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=False):
        part = table.filter(pl.col("metric") == metric)
        x = np.arange(part.height)
        means = part["mean"].to_numpy()
        err = np.vstack([means - part["ci_low"].to_numpy(), part["ci_high"].to_numpy() - means])
        colors = ["#999999" if not s else "#2a7ab0" for s in part["significant"].to_list()]
        ax.bar(x, means, yerr=np.nan_to_num(err), capsize=4, color=colors)
        ax.set_xticks(x, part["arm"].to_list())
        ax.set_title(metric)
    fig.suptitle(f"{table['experiment'][0] if table.height else ''}: mean and 95% CI (blue: p < 0.05 vs control)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def analysis_markdown(table: pl.DataFrame, png: bytes | None = None) -> str:
    """The analysis as a Markdown table, optionally followed by the plot as an inline PNG."""
    cols = ["metric", "arm", "n", "mean", "ci_low", "ci_high", "diff_vs_control", "p_value", "significant"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table.select(cols).iter_rows(named=True):
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    if png:
        lines.append(f"\n![analysis](data:image/png;base64,{base64.b64encode(png).decode()})")
    return "\n".join(lines)
