"""The gate's choice of the served version on a real local MLflow registry: the ranker when it beats every
baseline, else the best personalised baseline registered as a servable version of its own."""

import numpy as np
import polars as pl
import pytest

from recsys_platform.config import CHAMPION_ALIAS
from recsys_platform.model import gate, procedure, registry
from recsys_platform.model.candidates import FEATURES
from recsys_platform.model.ranker import ColumnScorer, train_ranker

PARAMS = {"ease_l2": 300.0, "depth": 20}


UNSEEN = "per_user" + procedure.UNSEEN_BY_CHAMPION


def _table(ranker: float, ease: float, knn: float, champion: float | None = None, unseen: dict | None = None):
    """A holdout table; with `champion`, the champion's rows on the events it was not trained with, beside the
    same scores of the others there (or `unseen`'s)."""
    scores = {"ranker": ranker, "popularity": 0.10, "recent_popularity": 0.12, "ease": ease, "item_knn": knn}
    rows = [{"protocol": "per_user", "model": m, "metric": "ndcg@10", "value": v} for m, v in scores.items()]
    rows += [{"protocol": "global", "model": m, "metric": "ndcg@10", "value": 0.5} for m in scores]
    if champion is not None:
        there = {**scores, **(unseen or {}), "champion": champion}
        rows += [{"protocol": UNSEEN, "model": m, "metric": "ndcg@10", "value": v} for m, v in there.items()]
    return pl.DataFrame(rows)


@pytest.fixture
def registered(tmp_path):
    """A registry holding ranker version 1 (with its model params tagged), and an input example."""
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, len(FEATURES))).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)
    booster, _ = train_ranker(x, y, np.repeat(np.arange(20), 10), seed=1)
    example = pl.DataFrame(x[:20], schema=list(FEATURES), orient="row")
    ref = registry.log_ranker(
        tracking, str(tmp_path / "art"), "gate-test", booster, example, {}, {}, {}, model_params=PARAMS
    )
    return tracking, str(tmp_path / "art"), ref, example


def _decide(registered, table, champion=None):
    tracking, artifacts, ref, example = registered
    return gate.decide(table, ref, example, tracking, artifacts, "gate-test", 0.0, champion)


def test_a_ranker_beating_every_baseline_is_served(registered) -> None:
    tracking, _, ref, _ = registered
    decision = _decide(registered, _table(ranker=0.30, ease=0.25, knn=0.20))
    assert decision.promoted and registry.alias_version(tracking, CHAMPION_ALIAS) == ref.version == "1"
    assert registry.version_tags(tracking, "1")["gate.baseline"] == "ease"  # the strongest baseline was the bar


def test_a_ranker_losing_to_a_baseline_serves_the_best_personalised_one(registered) -> None:
    tracking, _, ref, example = registered
    # EASE beats the ranker; item-kNN is the best *personalised* baseline here only if it beats EASE: it does not
    decision = _decide(registered, _table(ranker=0.20, ease=0.25, knn=0.22))
    assert decision.version == "2" and registry.alias_version(tracking, CHAMPION_ALIAS) == "2"
    tags = registry.version_tags(tracking, "2")
    assert tags[registry.SCORER_TAG] == "column:score_ease" and "did not beat ease (0.2500)" in tags["gate.reason"]
    assert registry.version_tags(tracking, "1")["gate.decision"] == "challenger"
    scorer, params, version = registry.load_scorer(tracking, CHAMPION_ALIAS)
    assert isinstance(scorer, ColumnScorer) and scorer.feature == "score_ease" and params == PARAMS and version == "2"
    # the registered pyfunc scores candidate rows exactly as the serving scorer does
    pyfunc = registry.load_pyfunc(tracking, "2")
    got = np.asarray(pyfunc.predict(example.to_pandas()))
    np.testing.assert_allclose(got, scorer.predict(example.to_numpy()))


def test_popularity_beating_the_ranker_still_serves_a_personalised_baseline(registered) -> None:
    tracking, _, _, _ = registered
    table = _table(ranker=0.11, ease=0.09, knn=0.095).with_columns(
        value=pl.when((pl.col("model") == "recent_popularity") & (pl.col("protocol") == "per_user"))
        .then(0.2)
        .otherwise(pl.col("value"))
    )
    _decide(registered, table)
    scorer, _, _ = registry.load_scorer(tracking, CHAMPION_ALIAS)
    assert scorer.feature == "score_knn"  # never one global list


def test_another_personalised_source_beating_ease_and_knn_is_what_gets_served(registered) -> None:
    """The best personalised list is chosen among every personalised source's own score, not only the two
    personalised baselines."""
    tracking, _, _, example = registered
    table = pl.concat(
        [
            _table(ranker=0.20, ease=0.25, knn=0.22),
            pl.DataFrame(
                [
                    {"protocol": "per_user", "model": "source_ease_session", "metric": "ndcg@10", "value": 0.27},
                    {"protocol": "per_user", "model": "source_ials", "metric": "ndcg@10", "value": 0.26},
                ]
            ),
        ]
    )
    decision = _decide(registered, table)
    assert "did not beat source_ease_session (0.2700)" in decision.reason
    assert "serving the best personalised list, source_ease_session (0.2700)" in decision.reason
    scorer, _, version = registry.load_scorer(tracking, CHAMPION_ALIAS)
    assert version == decision.version == "2" and scorer.feature == "score_ease_session"
    got = np.asarray(registry.load_pyfunc(tracking, "2").predict(example.to_pandas()))
    np.testing.assert_allclose(got, example["score_ease_session"].to_numpy())


def test_a_ranker_beating_the_baselines_but_not_a_sources_own_list_is_not_promoted(registered) -> None:
    """The bar is every list the cycle scored, not only the baselines: a ranker ahead of EASE and item-kNN but
    behind the sittings-and-sequence EASE's own list would serve worse lists than that list; that list is served."""
    tracking, artifacts, ref, example = registered
    table = pl.concat(
        [
            _table(ranker=0.26, ease=0.25, knn=0.22),
            pl.DataFrame(
                [{"protocol": "per_user", "model": "source_ease_session", "metric": "ndcg@10", "value": 0.27}]
            ),
        ]
    )
    decision = _decide(registered, table)
    assert decision.version == "2" and "ranker v1 (0.2600) did not beat source_ease_session (0.2700)" in decision.reason
    assert registry.version_tags(tracking, ref.version)["gate.decision"] == "challenger"
    assert registry.version_tags(tracking, ref.version)["gate.baseline"] == "source_ease_session"
    scorer, _, version = registry.load_scorer(tracking, CHAMPION_ALIAS)
    assert version == "2" and scorer.feature == "score_ease_session"
    # the same ranker ahead of that list too is promoted
    ahead = table.with_columns(value=pl.when(pl.col("model") == "ranker").then(0.28).otherwise(pl.col("value")))
    second = _second_version(registered)
    assert gate.decide(ahead, second, example, tracking, artifacts, "gate-test", 0.0, None).promoted


def test_a_champion_beating_the_baselines_is_kept_over_a_weaker_ranker(registered) -> None:
    tracking, artifacts, _, example = registered
    second = _second_version(registered)
    table = _table(ranker=0.20, ease=0.25, knn=0.22, champion=0.28)
    decision = gate.decide(table, second, example, tracking, artifacts, "gate-test", 0.0, champion="1")
    assert not decision.promoted and decision.alias == "challenger"
    assert registry.alias_version(tracking, CHAMPION_ALIAS) == "1"  # no baseline version registered either
    assert registry.version_tags(tracking, "2")["gate.champion_score"] == "0.280000"


def _second_version(registered):
    """Version 1 promoted by hand, and a new ranker version 2 of the same params."""
    tracking, artifacts, first, example = registered
    registry.promote(tracking, first, "by hand", {})
    booster = registry.load_ranker(tracking, "1")[0]
    return registry.log_ranker(tracking, artifacts, "gate-test", booster, example, {}, {}, {}, model_params=PARAMS)


def test_the_champion_is_compared_on_the_events_it_was_not_trained_with(registered) -> None:
    """On the whole holdout the ranker is ahead (0.30 against the champion's rows' 0.28 there would not count):
    on the events after the champion's training data the champion leads, so it stays."""
    tracking, artifacts, _, example = registered
    second = _second_version(registered)
    table = _table(ranker=0.30, ease=0.25, knn=0.22, champion=0.28, unseen={"ranker": 0.26, "ease": 0.20})
    decision = gate.decide(table, second, example, tracking, artifacts, "gate-test", 0.0, champion="1")
    assert not decision.promoted and registry.alias_version(tracking, CHAMPION_ALIAS) == "1"
    assert "0.2600 does not beat champion v1 (0.2800)" in decision.reason
    assert "on the held-out events it was not trained with" in decision.reason
    tags = registry.version_tags(tracking, "2")
    assert tags["gate.candidate_score"] == "0.300000" and tags["gate.candidate_vs_champion_score"] == "0.260000"


def test_a_champion_with_no_unseen_held_out_event_is_not_compared(registered) -> None:
    """A champion trained on every event of the holdout (the previous cycle's ranker on the same data) has no rows
    to be compared on: a ranker beating the strongest baseline is promoted, and the reason says so."""
    tracking, artifacts, _, example = registered
    second = _second_version(registered)
    decision = gate.decide(
        _table(ranker=0.30, ease=0.25, knn=0.22), second, example, tracking, artifacts, "gate-test", 0.0, champion="1"
    )
    assert decision.promoted and registry.alias_version(tracking, CHAMPION_ALIAS) == "2"
    assert decision.reason == "beats ease; champion v1 not compared: no held-out event after its training data"


def test_a_versions_newest_training_event_is_read_from_its_tag(registered) -> None:
    """A ranker's LABELS_UNTIL_TAG; for a ranker registered without it, its creation time (no later event could
    have trained it); none for a baseline version, whose column scorer learned nothing."""
    from datetime import UTC, datetime, timedelta

    tracking, artifacts, first, example = registered
    booster = registry.load_ranker(tracking, "1")[0]
    until = datetime(2026, 3, 1, 12, tzinfo=UTC)
    tagged = registry.log_ranker(
        tracking, artifacts, "gate-test", booster, example, {}, {}, {}, model_params=PARAMS, labels_until=until
    )
    assert registry.version_tags(tracking, tagged.version)[registry.LABELS_UNTIL_TAG] == "2026-03-01T12:00:00+00:00"
    assert registry.labels_until(tracking, tagged.version) == until
    assert registry.ScorerLoader(tracking, tagged.version)()[2] == until
    created = registry.labels_until(tracking, first.version)
    assert abs(created - datetime.now(UTC)) < timedelta(minutes=5)
    _decide(registered, _table(ranker=0.20, ease=0.25, knn=0.22))  # registers EASE's own score as a version
    baseline = registry.alias_version(tracking, CHAMPION_ALIAS)
    assert registry.version_tags(tracking, baseline)[registry.SCORER_TAG] == "column:score_ease"
    assert registry.labels_until(tracking, baseline) is None


def test_the_gate_step_logs_the_champions_rows_and_keeps_a_champion_ahead_on_them(registered, tmp_path) -> None:
    """`model_evaluation` over holdout tables holding the champion's rows: the champion, ahead of the new ranker
    on the events it was not trained with, stays; those rows are logged to the new version's MLflow run and shown."""
    import dagster as dg

    from assets.training import model_evaluation
    from resources import MlflowResource, PipelineResource

    tracking, artifacts, _, example = registered
    second = _second_version(registered)
    table = _table(ranker=0.30, ease=0.25, knn=0.22, champion=0.28, unseen={"ranker": 0.26, "ease": 0.20})
    holdouts = {
        p: table.filter(pl.col("protocol").str.starts_with(p)).with_columns(champion_version=pl.lit("1"))
        for p in ("per_user", "global")
    }
    upstream = [
        dg.asset(name="ranker_model")(lambda: second.to_dict()),
        dg.asset(name="training_set")(lambda: example),
        dg.asset(name="holdout_per_user")(lambda: holdouts["per_user"]),
        dg.asset(name="holdout_global")(lambda: holdouts["global"]),
    ]
    result = dg.materialize_to_memory(
        [*upstream, model_evaluation],
        resources={
            "mlflow": MlflowResource(tracking_uri=tracking, artifact_uri=artifacts, experiment="gate-test"),
            "pipeline": PipelineResource(
                lake_url=str(tmp_path / "lake"), catalog_path=str(tmp_path / "c.duckdb"), promotion_margin=0.0
            ),
        },
    )
    out = result.output_for_node("model_evaluation")
    assert registry.alias_version(tracking, CHAMPION_ALIAS) == "1" and set(out["served_version"]) == {"1"}
    metrics = registry._client(tracking).get_run(second.run_id).data.metrics
    assert metrics[f"{UNSEEN}.champion.ndcg_at_10"] == pytest.approx(0.28)
    assert metrics[f"{UNSEEN}.ranker.ndcg_at_10"] == pytest.approx(0.26)
    assert "does not beat champion v1 (0.2800)" in registry.version_tags(tracking, "2")["gate.reason"]


def test_a_ranker_ahead_by_less_than_the_gaps_noise_is_not_promoted(registered) -> None:
    """With `z`, the ranker must beat the best rival by z standard errors of their per-user gap: 0.26 against
    EASE's 0.25 with a standard error of 0.008 is within noise at z = 2 (bar 0.266), so EASE's own list is served
    and the reason says why; the same lead with a standard error of 0.004 (bar 0.258) promotes it."""
    tracking, artifacts, ref, example = registered

    def with_se(se: float) -> pl.DataFrame:
        gap = [{"protocol": "per_user", "model": "ease", "metric": procedure.GAP_SE, "value": se}]
        return pl.concat([_table(ranker=0.26, ease=0.25, knn=0.22), pl.DataFrame(gap)])

    noisy = gate.decide(with_se(0.008), ref, example, tracking, artifacts, "gate-test", 0.0, None, z=2.0)
    assert noisy.version == "2" and "did not beat ease (0.2500) by 0.0160 (2 standard errors" in noisy.reason
    tags = registry.version_tags(tracking, ref.version)
    assert tags["gate.decision"] == "challenger" and float(tags["gate.gap_se"]) == pytest.approx(0.008)
    assert float(tags["gate.noise"]) == pytest.approx(0.016)
    assert registry.load_scorer(tracking, CHAMPION_ALIAS)[0].feature == "score_ease"
    clear = gate.decide(
        with_se(0.004), _second_version(registered), example, tracking, artifacts, "gate-test", 0.0, None, z=2.0
    )
    assert clear.promoted and registry.alias_version(tracking, CHAMPION_ALIAS) == clear.version
    # z = 0: any lead promotes, as before
    assert gate.decide(
        with_se(0.008), _second_version(registered), example, tracking, artifacts, "gate-test", 0.0, None
    ).promoted


def test_the_gaps_standard_error_is_the_paired_per_user_spread() -> None:
    """`procedure.gap_standard_error`: the sample standard deviation of ranker minus model per shared user over
    the square root of their number; users of only one side are left out; one user gives 0."""
    a = pl.DataFrame({"user_id": ["u1", "u2", "u3", "u4"], "ndcg": [0.5, 0.2, 0.9, 0.0]})
    b = pl.DataFrame({"user_id": ["u4", "u3", "u2", "u1", "u9"], "ndcg": [0.1, 0.4, 0.2, 0.3, 1.0]})
    gaps = np.array([0.5 - 0.3, 0.2 - 0.2, 0.9 - 0.4, 0.0 - 0.1])
    assert procedure.gap_standard_error(a, b) == pytest.approx(gaps.std(ddof=1) / 2.0)
    assert procedure.gap_standard_error(a.head(1), b) == 0.0
