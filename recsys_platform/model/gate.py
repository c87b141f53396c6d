"""The promotion gate's choice of the served version: the new ranker, the current champion, or a baseline.

The ranker is promoted only if it beats every list the cycle scored beside it (and the serving champion) on
the primary holdout: the baselines and each personalised source's own list (`procedure.SCORED_COLUMNS`); the
champion stays while it beats them too; when nothing does, the best *personalised* list (EASE, item-kNN or
another personalised source's own score, `procedure.PERSONALISED_CANDIDATES`) is registered as a version of its
own (same params, a pyfunc scoring candidates by its score) and made champion, so users never get one global list
when a personalised one is better.

Why the sources are in the bar, not only the baselines: a ranker that beats EASE but loses to another source's
list on the holdout serves worse lists than that source would. On order-free data (ml-100k's train part under
the random protocol, `RECSYS_TRAINING_WINDOWS=random`) it did: on four inner random splits of
two development train parts (seeds 42 and 43, each split again, `benchmarks/quality.py --protocol random`),
the ranker served by force scored 0.987 of EASE's nDCG@10 on average (0.963-1.024). Measured against the
baselines alone it was promoted on two of the four (1.024 and 0.963 of EASE there) and the served lists averaged
1.005 of EASE; measured against the source lists too, the sittings-and-sequence EASE was served on all four, 1.020.

Why a lead within noise does not promote (`z`, RECSYS_PROMOTION_Z, default 2): the ranker must beat the best rival
by z standard errors of their per-user nDCG gap on the holdout (`procedure.GAP_SE`), not by any amount. With a
stronger sittings-and-sequence EASE (its neighbours weighted 1, l2 600 and dropout 0.7 in the grid) the same four
inner splits gave the ranker small leads on the gate's holdout twice (t = 1.13 and 0.36) and it lost to that source
on the test both times: served x EASE 1.0103 / 1.0319 / 1.0193 / 0.9926 (mean 1.0135) with z = 0, 1.0232 with
z = 1, 1.0243 with z = 2 (the source served on all four; 1.0220 for the code before both changes). On ml-100k's
temporal train parts split again, and on synthetic development seed 11, the ranker led by t = 4.8 and 21-23: served
either way. z was chosen from 0 / 1 / 2 on these splits only.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import polars as pl

from recsys_platform.model import procedure, registry

logger = logging.getLogger(__name__)


def decide(
    table: pl.DataFrame,
    ref: registry.ModelRef,
    example: pl.DataFrame,
    tracking_uri: str,
    artifact_uri: str | None,
    experiment: str,
    margin: float,
    champion: str | None,
    run_tags: dict[str, str] | None = None,
    z: float = 0.0,
) -> registry.GateDecision:
    """Apply the gate to the long metrics `table` of `procedure.evaluate` (with a `champion` model when the
    serving version was scored too) for the new ranker version `ref`; `example` is an input example (FEATURES
    rows) for a baseline version's signature. The ranker must beat the strongest rival by `margin` and by `z`
    standard errors of its per-user gap to that rival (`procedure.GAP_SE`)."""
    primary = procedure.PRIMARY_PROTOCOL
    ranker = procedure.metric(table, primary, "ranker")
    rivals = tuple(procedure.SCORED_COLUMNS)  # the baselines and every personalised source's own list
    name, best = procedure.strongest_baseline(table, primary, rivals)
    gap_se: float | None = procedure.metric(table, primary, name, procedure.GAP_SE)
    gap_se = None if np.isnan(gap_se) else gap_se  # a table without the column: no bar
    noise = z * (gap_se or 0.0)
    # The champion is compared on the held-out events it was not trained with, against the ranker and the
    # baselines on those same events; not at all when the holdout has none (`procedure.evaluate`).
    unseen = primary + procedure.UNSEEN_BY_CHAMPION
    champion_score = procedure.metric(table, unseen, "champion") if champion and champion != ref.version else None
    if champion_score is not None and np.isnan(champion_score):
        champion_score = None
    ranker_on_unseen = procedure.metric(table, unseen, "ranker") if champion_score is not None else None
    decision = registry.promotion_gate(
        tracking_uri,
        ref,
        ranker,
        best,
        champion_score,
        margin,
        baseline_name=name,
        candidate_vs_champion=ranker_on_unseen,
        noise=noise,
        gap_se=gap_se,
    )
    if decision.alias == registry.CHAMPION_ALIAS:
        return decision
    if champion_score is not None and champion_score > procedure.strongest_baseline(table, unseen, rivals)[1]:
        return decision
    personal, score = procedure.strongest_baseline(table, primary, procedure.PERSONALISED_CANDIDATES)
    params = json.loads(registry.version_tags(tracking_uri, ref.version, ref.name).get(registry.PARAMS_TAG, "{}"))
    feature = procedure.SCORED_COLUMNS[personal]
    if champion:
        tags = registry.version_tags(tracking_uri, champion, ref.name)
        if (
            tags.get(registry.SCORER_TAG) == f"column:{feature}"
            and json.loads(tags.get(registry.PARAMS_TAG, "{}")) == params
        ):
            logger.info("champion v%s already serves %s with these params: kept", champion, personal)
            return decision
    baseline_ref = registry.log_baseline_version(
        tracking_uri=tracking_uri,
        artifact_uri=artifact_uri,
        experiment=experiment,
        feature=feature,
        input_example=example,
        model_params=params,
        tags={**(run_tags or {}), "baseline": personal},
        model_name=ref.name,
    )
    reason = (
        f"ranker v{ref.version} ({ranker:.4f}) did not beat {name} ({best:.4f})"
        + (f" by {noise:.4f} ({z:g} standard errors of the gap)" if noise else "")
        + f" on the {primary} holdout"
        + (f" and champion v{champion} ({champion_score:.4f}) does not either" if champion_score is not None else "")
        + f": serving the best personalised list, {personal} ({score:.4f})"
    )
    logger.warning(reason)
    return registry.promote(
        tracking_uri, baseline_ref, reason, {"gate.candidate_score": score, "gate.ranker_score": ranker}
    )
