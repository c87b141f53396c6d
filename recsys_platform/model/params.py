"""Every parameter that defines a model's candidate lists and feature values, carried by each model version."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class ModelParams:
    """Source, candidate and ranker settings. The data-dependent ones (l2s, dropout, half-lives) are picked by
    `model.tuning` on the training window of each cycle; the rest are fixed defaults."""

    ease_l2: float = 300.0
    recency_half_life: float = 8.0  # positions from the user's latest item
    recent_half_life_days: float = 14.0
    knn_neighbours: int = 100
    session_gap_minutes: float = 30.0
    ease_session_l2: float = 1000.0  # with its EDLAE dropout, picked by `model.tuning`
    ease_session_dropout: float = 0.0
    seq_window: int = 5  # window and last_k: the best of 1-5 x 1-10 on ml-100k's inner per-user split
    seq_last_k: int = 10
    ials_factors: int = 64
    ials_l2: float = 10.0
    ials_alpha: float = 5.0
    ials_iterations: int = 15
    # iALS fits its item factors on at most this many users (a seeded sample, each standing for the users it
    # represents: `fit_ials`); 0: on everyone. The user factors are solved from each profile when scoring, so every
    # user is still scored on their own history. Below the cap nothing changes (ml-100k, the quickstart). Chosen on
    # development data only (`benchmarks/scale.py` data at 100k users x 30 days, `procedure.evaluate` per-user,
    # nDCG@10 ranker / iALS source, time on 2 cores): no cap 0.3023 / 0.1966 in 140 s, 50k 0.3030 / 0.1968 in 109 s,
    # 25k 0.3039 / 0.1970 in 96 s, 10k 0.3043 / 0.1994; global protocol no cap 0.2744 / 0.1658 in 189 s, 25k
    # 0.2736 / 0.1681 in 162 s. iALS had been half of that evaluation's time (one fit per
    # training window), and one fit on everyone took minutes of the 1M-user `recommendations` step.
    ials_max_users: int = 25_000
    # Candidates per source (RECSYS_CANDIDATES_PER_SOURCE). On ml-100k's per-user train part split again (inner),
    # served nDCG@10 for ranker seeds 7 / 8 / 9: 50 -> 0.2604 / 0.2562 / 0.2599, 30 -> 0.2527 / 0.2548 / 0.2567,
    # 100 -> 0.2486 / 0.2475 / 0.2527.
    depth: int = 50
    # The ranker's labels: windows joined by "+" (procedure.training_set). Per-user and three global windows,
    # the global ones at a quarter of the way to equal weight: on ml-100k's inner splits this kept the per-user
    # nDCG@10 (0.2537 vs 0.2537 per-user alone) and raised the global one (0.150 vs 0.138; equal weight 0.201
    # but per-user 0.186; random labels: per-user 0.170, see procedure.training_set).
    # "temporal" is one per-user window, two where the newest one labels fewer users than `label_users`
    # (procedure._per_user_windows): on ml-100k's per-user train part split again (inner, 943 users), served nDCG@10
    # one window / two, ranker seeds 7, 8, 9: 0.2520 / 0.2604, 0.2515 / 0.2562, 0.2471 / 0.2599, and on the global
    # protocol's train part 0.2573 / 0.2594; three windows 0.2454 and 0.2602 (seed 7); the inner global figure (90
    # users) 0.3271 / 0.3232.
    # "+session" adds each user's newest sitting (only where the data has the signals the kept groups read,
    # candidates.signals_for): the window on which session signals are measured and, with a kept group
    # (candidates.KEPT_SESSION_GROUPS), learned.
    training_windows: str = "temporal+global3+session"
    # At most this many users label each training window (a seeded sample; 0: no cap beyond the cycle's
    # max_training_users), so the ranker's training time stays flat as the user base grows. ml-100k's windows
    # hold fewer users. Synthetic latent dev seed 11, held-out training users (benchmarks/ranker_settings.py,
    # one split): no cap (4,000) 0.4203 nDCG@10 in 359 s, 2,000 0.4127 in 138 s, 1,000 0.4134 in 65 s: the cap
    # costs ~0.007 there for a 5x faster fit.
    label_users: int = 1000
    balance_windows: float = 0.25  # 1: every kind of window weighs the same in the ranker's loss; 0: by its users
    exclude_seen: bool = True
    # The search features' text encoder (`model.text`; "auto" is resolved when the params are read off the data,
    # `procedure.data_params`), so a version carries the encoder its ranker was trained with.
    text_encoder: str = "hashed"
    recent_completion_days: float = 0.5  # where replays are recommended, not a pair completed this recently (0: off)
    seed: int = 7

    @property
    def order_free(self) -> bool:
        """Whether the ranker learns only from random windows (RECSYS_TRAINING_WINDOWS=random): the objective is a
        user's missing items anywhere in their history, not their next ones, so tuning and the gate's primary
        holdout are per-user random splits too."""
        return set(self.training_windows.split("+")) == {"random"}

    def with_(self, **changes: Any) -> ModelParams:
        """A copy with `changes`."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for MLflow params and JSON)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelParams:
        """Inverse of `to_dict` (unknown keys ignored, types restored from the defaults)."""
        known = cls.__dataclass_fields__
        out = {}
        for k, v in values.items():
            if k in known:
                default = known[k].default
                out[k] = (v in (True, "True", "true", 1, "1")) if isinstance(default, bool) else type(default)(v)
        return cls(**out)
