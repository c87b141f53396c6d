"""Business rules: each rule on hand-built ranked frames, rule application counts, YAML validation."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys_platform.batch import rules
from recsys_platform.batch.rules import RuleContext, RuleStep, apply_rules
from recsys_platform.batch.set_config import SetsConfigError, load_sets_config, parse_sets_config
from recsys_platform.config import Settings

TODAY = date(2026, 10, 1)
NOW = datetime(2026, 10, 1, 12, tzinfo=UTC)
USERS = pl.DataFrame(
    {
        "user_id": ["fam", "solo", "de"],
        "household_type": ["family_with_kids", "single", "couple"],
        "language": ["en", "en", "de"],
    }
)


def ranked(user: str, items: list[dict], **defaults) -> pl.DataFrame:
    """A ranked frame for one user: ranks 1..n in list order, scores descending."""
    base = {
        "title": "t",
        "content_type": "meditation",
        "topic": "stress",
        "narrator": "n1",
        "series_id": None,
        "series_position": None,
        "language": "en",
        "release_date": date(2025, 1, 1),
        "is_kids": False,
    }
    rows = []
    for k, item in enumerate(items):
        row = {**base, **defaults, **item}
        row.update(user_id=user, rank=k + 1, score=float(len(items) - k))
        rows.append(row)
    return pl.DataFrame(rows, schema_overrides={"series_id": pl.String, "series_position": pl.Int64})


def ctx(**kw) -> RuleContext:
    return RuleContext(today=TODAY, users=USERS, now=NOW, **kw)


def items_of(frame: pl.DataFrame, user: str | None = None) -> list[str]:
    """Item ids in frame order (rules return rows in their new order; `apply_rules` renumbers ranks)."""
    f = frame if user is None else frame.filter(pl.col("user_id") == user)
    return f["item_id"].to_list()


def test_content_type_include_and_exclude_keep_order():
    f = ranked(
        "solo", [{"item_id": "a", "content_type": "music"}, {"item_id": "b"}, {"item_id": "c", "content_type": "music"}]
    )
    assert items_of(rules.content_type(f, ctx(), include=["music"])) == ["a", "c"]
    assert items_of(rules.content_type(f, ctx(), exclude=["music"])) == ["b"]
    assert items_of(rules.content_type(f, ctx(), include=["music", "meditation"], exclude=["music"])) == ["b"]


def test_new_content_only_keeps_recent_releases_not_future_ones():
    f = ranked(
        "solo",
        [
            {"item_id": "old", "release_date": TODAY - timedelta(days=40)},
            {"item_id": "new", "release_date": TODAY - timedelta(days=3)},
            {"item_id": "edge", "release_date": TODAY - timedelta(days=14)},
            {"item_id": "future", "release_date": TODAY + timedelta(days=2)},
        ],
    )
    assert items_of(rules.new_content_only(f, ctx(), days=14)) == ["new"]


def test_language_matches_the_user_with_optional_fallback():
    f = ranked("de", [{"item_id": "en1"}, {"item_id": "de1", "language": "de"}, {"item_id": "fr1", "language": "fr"}])
    assert items_of(rules.language(f, ctx())) == ["de1"]
    assert items_of(rules.language(f, ctx(), fallback=["en"])) == ["en1", "de1"]


def test_kids_guard_only_families_get_kids_content_and_adult_only_sets_get_none():
    kids = [{"item_id": "k1", "is_kids": True, "content_type": "kids"}, {"item_id": "m1"}]
    f = pl.concat([ranked("fam", kids), ranked("solo", kids), ranked("nobody-known", kids)])
    out = rules.kids_guard(f, ctx())
    assert items_of(out, "fam") == ["k1", "m1"]
    assert items_of(out, "solo") == ["m1"]
    assert items_of(out, "nobody-known") == ["m1"]  # unknown household: no kids content
    adult = rules.kids_guard(f, ctx(), adult_only=True)
    assert not adult["is_kids"].any()
    assert items_of(adult, "fam") == ["m1"]


def test_exclude_recently_completed_uses_the_window_before_now():
    completions = pl.DataFrame(
        {
            "user_id": ["solo", "solo", "solo", "fam"],
            "item_id": ["a", "b", "c", "d"],
            "event_time": [NOW - timedelta(days=1), NOW - timedelta(days=5), NOW + timedelta(hours=1), NOW],
        },
        schema_overrides={"event_time": pl.Datetime("us", "UTC")},
    )
    f = ranked("solo", [{"item_id": x} for x in "abcd"])
    assert items_of(rules.exclude_recently_completed(f, ctx(completions=completions), days=3)) == ["b", "c", "d"]
    assert items_of(rules.exclude_recently_completed(f, ctx(completions=completions), days=7)) == ["c", "d"]


def test_series_cap_keeps_the_best_ranked_items_of_each_series():
    f = ranked(
        "solo",
        [
            {"item_id": "s1a", "series_id": "s1"},
            {"item_id": "x"},
            {"item_id": "s1b", "series_id": "s1"},
            {"item_id": "y"},
            {"item_id": "s1c", "series_id": "s1"},
            {"item_id": "s2a", "series_id": "s2"},
        ],
    )
    assert items_of(rules.series_cap(f, ctx(), max_per_series=2)) == ["s1a", "x", "s1b", "y", "s2a"]
    assert items_of(rules.series_cap(f, ctx(), max_per_series=1)) == ["s1a", "x", "y", "s2a"]


def test_roll_up_series_makes_one_row_per_series_at_its_best_rank():
    f = ranked(
        "solo",
        [
            {"item_id": "x"},
            {"item_id": "s1b", "series_id": "s1", "series_position": 2},
            {"item_id": "s1a", "series_id": "s1", "series_position": 1},
            {"item_id": "y"},
            {"item_id": "s1c", "series_id": "s1", "series_position": 3},
        ],
    ).with_columns(entity_type=pl.lit("item"))
    out, counts = apply_rules(f, [RuleStep("roll_up_series")], ctx())
    assert items_of(out) == ["x", "s1", "y"]
    series = out.filter(pl.col("item_id") == "s1").row(0, named=True)
    assert series["entity_type"] == "series" and series["rank"] == 2 and series["score"] == 4.0
    assert counts[0]["removed"] == 2 and counts[0]["moved"] == 0


def test_search_match_uses_the_last_query_words_against_topics_and_types():
    searches = pl.DataFrame({"user_id": ["solo"], "query": ["Kids bedtime calm kids"]})
    f = pl.concat(
        [
            ranked(
                "solo",
                [
                    {"item_id": "calm", "topic": "calm_kids", "content_type": "kids"},
                    {"item_id": "stress"},
                    {"item_id": "body", "topic": "body_scan"},
                    {"item_id": "bed", "topic": "bedtime", "content_type": "sleep_story"},
                    {"item_id": "kidsyoga", "topic": "yoga", "content_type": "kids"},
                ],
            ),
            ranked("fam", [{"item_id": "calm", "topic": "calm_kids"}]),
        ]
    )
    out = rules.search_match(f, ctx(searches=searches))
    assert items_of(out) == ["calm", "bed", "kidsyoga"]  # "fam" never searched: no rows
    assert out["context"].unique().to_list() == ["Kids bedtime calm kids"]
    partial = pl.DataFrame({"user_id": ["solo"], "query": ["body relax"]})
    assert items_of(rules.search_match(f, ctx(searches=partial))) == []  # body_scan needs both words


def test_limit_keeps_the_top_n_per_user():
    f = pl.concat([ranked("solo", [{"item_id": x} for x in "abcde"]), ranked("fam", [{"item_id": "z"}])])
    out = rules.limit(f, ctx(), n=2)
    assert items_of(out, "solo") == ["a", "b"] and items_of(out, "fam") == ["z"]


def _many(user: str, n: int = 40) -> pl.DataFrame:
    return ranked(user, [{"item_id": f"i{k:03d}"} for k in range(n)])


def test_daily_shuffle_is_stable_within_a_day_and_changes_across_days():
    f = pl.concat([_many(f"u{k}") for k in range(20)])
    day1 = RuleContext(today=TODAY, users=USERS)
    again = rules.daily_shuffle(f, day1, window=4, keep_top=2)
    assert again.equals(rules.daily_shuffle(f.sample(fraction=1.0, seed=3).sort("user_id", "rank"), day1, 4, 2))
    next_day = rules.daily_shuffle(f, RuleContext(today=TODAY + timedelta(days=1), users=USERS), window=4, keep_top=2)
    changed_users = sum(items_of(again, f"u{k}") != items_of(next_day, f"u{k}") for k in range(20))
    assert changed_users == 20
    # users get different orders on the same day
    assert items_of(again, "u0") != items_of(again, "u1")
    for k in range(20):
        order = items_of(again, f"u{k}")
        assert order[:2] == ["i000", "i001"]  # keep_top stays in place
        assert sorted(order) == [f"i{j:03d}" for j in range(40)]
        moves = [abs(pos - int(item[1:])) for pos, item in enumerate(order)]
        assert max(moves) <= 3  # within its window of 4
        # each window holds exactly its own items: the top stays the top
        assert sorted(order[2:6]) == ["i002", "i003", "i004", "i005"]


def test_max_consecutive_breaks_long_runs_minimally():
    types = ["a", "a", "a", "a", "b", "b", "c"]
    f = ranked("solo", [{"item_id": f"x{k}", "content_type": t} for k, t in enumerate(types)])
    out = rules.max_consecutive(f, ctx(), column="content_type", max_run=2)
    assert items_of(out) == ["x0", "x1", "x4", "x2", "x3", "x5", "x6"]
    tail = ranked("solo", [{"item_id": "y0", "content_type": "b"}] + [{"item_id": f"z{k}"} for k in range(4)])
    assert items_of(rules.max_consecutive(tail, ctx(), max_run=2)) == ["y0", "z0", "z1", "z2", "z3"]
    topics = ["t1"] * 6 + ["t2"] * 3 + ["t3"] * 3
    g = ranked("solo", [{"item_id": f"w{k}", "topic": t} for k, t in enumerate(topics)])
    res = rules.max_consecutive(g, ctx(), column="topic", max_run=1)["topic"].to_list()
    runs = max(len(list(grp)) for _, grp in __import__("itertools").groupby(res))
    assert runs == 1 and sorted(res) == sorted(topics)


def test_new_release_slot_lifts_the_best_new_release_to_the_slot():
    rows = [{"item_id": f"o{k}"} for k in range(8)]
    rows[6] = {"item_id": "fresh", "release_date": TODAY - timedelta(days=2)}
    rows[7] = {"item_id": "fresh2", "release_date": TODAY - timedelta(days=1)}
    f = ranked("solo", rows)
    out = apply_rules(f, [RuleStep("new_release_slot", {"days": 14, "slot": 3, "count": 1})], ctx())[0]
    assert items_of(out) == ["o0", "o1", "fresh", "o2", "o3", "o4", "o5", "fresh2"]
    assert out["rank"].to_list() == list(range(1, 9))
    already = ranked("solo", [{"item_id": "n", "release_date": TODAY}] + [{"item_id": f"o{k}"} for k in range(4)])
    assert items_of(rules.new_release_slot(already, ctx(), slot=3)) == items_of(already)


def test_fast_paths_equal_the_group_by_forms_on_many_users():
    """Rules take numpy paths when users come in ascending contiguous runs; users in descending order take
    the polars group-by / over() forms. Both must give every user the same rows, values and order."""
    rng = np.random.default_rng(11)
    users = [f"u{k:02d}" for k in range(12)]
    frames = []
    for u in users:
        n = int(rng.integers(5, 30))
        frames.append(
            ranked(
                u,
                [
                    {
                        "item_id": f"i{j:03d}",
                        "series_id": None if rng.random() < 0.4 else f"s{int(rng.integers(0, 4))}",
                        "content_type": ["music", "sleep_story", None][int(rng.integers(0, 3))],
                        "topic": ["sleep", "focus"][int(rng.integers(0, 2))],
                        "release_date": TODAY - timedelta(days=int(rng.integers(0, 40))),
                    }
                    for j in rng.permutation(60)[:n]
                ],
            )
        )
    fast = pl.concat(frames).with_columns(entity_type=pl.lit("item"))
    slow = pl.concat(frames[::-1]).with_columns(entity_type=pl.lit("item"))
    assert rules._user_starts(fast) is not None and rules._user_starts(slow) is None
    searches = pl.DataFrame({"user_id": users[::3], "query": ["sleep music", "Focus", "sleep story", "none"]})
    played = fast.select("user_id", "item_id").gather_every(3).with_columns(favourite=pl.int_range(pl.len()) % 4 == 0)
    calls = [
        ("roll_up_series", {}),
        ("series_cap", {"max_per_series": 1}),
        ("limit", {"n": 7}),
        ("new_release_slot", {"days": 10, "slot": 2, "count": 2}),
        ("max_consecutive", {"column": "content_type", "max_run": 1}),
        ("daily_shuffle", {"window": 3, "keep_top": 1}),
        ("search_match", {}),
        ("max_replays", {"n": 1, "top": 4}),
    ]
    rich = ctx(searches=searches, played=played)
    nth = [f.with_columns(_nth=rules._nth_in_group(f, "series_id")).sort("user_id", "rank") for f in (fast, slow)]
    assert nth[0].equals(nth[1]) and nth[0]["series_id"].null_count() > 0  # the null group counted too
    for name, params in calls:
        a, b = rules.RULES[name].fn(fast, rich, **params), rules.RULES[name].fn(slow, rich, **params)
        assert a.height > 0, name
        for u in users:
            assert a.filter(pl.col("user_id") == u).equals(b.filter(pl.col("user_id") == u)), (name, u)


def _consecutive_reference(values: list, max_run: int, passes: int = 50) -> list[int]:
    """`max_consecutive`'s passes on one user's list, row by row: the order of the original rows."""
    order = list(range(len(values)))
    for _ in range(passes):
        cur = [values[i] for i in order]
        keys, excess = [], False
        start = 0
        while start < len(cur):  # one run: equal values, a null never continues a run
            end = start + 1
            while end < len(cur) and cur[end] is not None and cur[end] == cur[start]:
                end += 1
            for p in range(start, end):
                late = p - start >= max_run and end < len(cur)  # past the limit, with a next run to go behind
                keys.append((end, 1, p - start) if late else (p, 0, 0))
                excess |= late
            start = end
        if not excess:
            break
        order = [order[p] for p in sorted(range(len(cur)), key=keys.__getitem__)]
    return order


def test_max_consecutive_passes_equal_a_row_by_row_reference():
    rng = np.random.default_rng(5)
    for _ in range(300):
        lengths = rng.integers(1, 30, int(rng.integers(1, 8)))
        values = [None if rng.random() < 0.1 else int(rng.integers(0, 3)) for _ in range(int(lengths.sum()))]
        max_run = int(rng.integers(1, 4))
        user = np.repeat(np.arange(len(lengths)), lengths)
        code = np.array([-1 - k if v is None else v for k, v in enumerate(values)])  # nulls unique, as the rule codes
        perm, converged = rules._consecutive_order(user, code, max_run)
        expected, start = [], 0
        for n in lengths:
            expected += [start + k for k in _consecutive_reference(values[start : start + n], max_run)]
            start += n
        assert converged and (np.arange(len(values)) if perm is None else perm).tolist() == expected


def test_moved_counts_equal_a_row_by_row_reference():
    """Rows at another position among the rows both frames share by (user, item); nulls never match."""
    rng = np.random.default_rng(9)

    def reference(before: pl.DataFrame, after: pl.DataFrame, same_rows: bool) -> int:
        b, a = before.select("user_id", "item_id").rows(), after.select("user_id", "item_id").rows()
        if not same_rows or len(b) != len(a):
            b_keys, a_keys = {r for r in b if None not in r}, {r for r in a if None not in r}
            b, a = [r for r in b if r in a_keys], [r for r in a if r in b_keys]
        if len(b) != len(a):  # duplicates: the shared rows of `after`
            return len(a)
        # a null compared with anything is not a difference (as `!=` on the columns)
        return sum(x != y and None not in (x, y) for r, s in zip(b, a, strict=True) for x, y in zip(r, s, strict=True))

    for _ in range(300):
        n = int(rng.integers(0, 25))
        items = [None if rng.random() < 0.05 else f"i{int(rng.integers(0, 12))}" for _ in range(n)]
        before = pl.DataFrame(
            {"user_id": [f"u{int(rng.integers(0, 3))}" for _ in range(n)], "item_id": items},
            schema={"user_id": pl.String, "item_id": pl.String},
        )
        after = before.sample(fraction=1.0, shuffle=True, seed=int(rng.integers(0, 1000)))
        after = after.head(int(rng.integers(0, n + 1)))
        if rng.random() < 0.5:
            extra = pl.DataFrame({"user_id": ["u0"], "item_id": [f"s{int(rng.integers(0, 3))}"]})
            after = pl.concat([after, extra])
        for same in (True, False):
            assert rules._moved(before, after, same) == reference(before, after, same)


def test_run_helpers_equal_their_numpy_forms():
    rng = np.random.default_rng(2)
    for n in (1, 2, 7, 100):
        for p in (0.0, 0.2, 1.0):
            starts = rng.random(n) < p
            idx = np.arange(n)
            assert rules._offsets(starts).tolist() == (idx - np.maximum.accumulate(np.where(starts, idx, 0))).tolist()
            assert rules._run_numbers(starts).tolist() == np.cumsum(starts).tolist()


def test_apply_rules_counts_removed_and_moved_rows_per_rule():
    f = pl.concat(
        [
            ranked("solo", [{"item_id": "k", "is_kids": True}, {"item_id": "a"}, {"item_id": "b"}]),
            ranked("fam", [{"item_id": "k", "is_kids": True}, {"item_id": "a"}]),
        ]
    )
    types = {"a": "music", "b": "music", "k": "kids"}
    f = f.with_columns(content_type=pl.col("item_id").replace_strict(types))
    steps = [RuleStep("kids_guard"), RuleStep("content_type", {"exclude": ["kids"]}), RuleStep("limit", {"n": 1})]
    out, counts = apply_rules(f, steps, ctx())
    assert [(c["rule"], c["rows_in"], c["removed"], c["moved"]) for c in counts] == [
        ("kids_guard", 5, 1, 0),
        ("content_type", 4, 1, 0),
        ("limit", 3, 1, 0),
    ]
    assert sorted(out.select("user_id", "item_id", "rank").rows()) == [("fam", "a", 1), ("solo", "a", 1)]
    shuffled, c2 = apply_rules(pl.concat([_many("u1"), _many("u2")]), [RuleStep("daily_shuffle", {"window": 5})], ctx())
    moved = int((shuffled["item_id"] != pl.concat([_many("u1"), _many("u2")])["item_id"]).sum())
    assert c2[0]["removed"] == 0 and c2[0]["moved"] == moved > 0


# --- YAML ------------------------------------------------------------------------------


def test_shipped_config_loads_with_the_four_sets():
    cfg = load_sets_config(Settings.from_env().recommendation_sets_path)
    assert [s.name for s in cfg.sets] == ["recommended_for_you", "sleep_tonight", "because_you_searched", "new_for_you"]
    assert all(step.name in rules.RULES for s in cfg.sets for step in s.rules)
    assert cfg.batch.items_per_user == 500 and cfg.experiments[0].control == "control"


def test_invalid_config_lists_every_problem_with_its_location():
    raw = {
        "batch": {"shards": "many", "depth": 3},
        "sets": {
            "home": {
                "size": 0,
                "rules": [
                    "daily_shuffel",
                    {"series_cap": {"max_per_serie": 2}},
                    {"limit": {"n": "ten"}},
                    {"max_consecutive": {"column": "narrator"}},
                    {"kids_guard": {"adult_only": "yes"}},
                    ["not", "a", "rule"],
                ],
            }
        },
        "experiments": [
            {"name": "e", "arms": {"a": 1, "b": -1}},
            {"name": "f", "arms": {"a": 1, "b": 1}, "control": "c", "surface": "x"},
        ],
        "extra": 1,
    }
    with pytest.raises(SetsConfigError) as err:
        parse_sets_config(raw, "sets.yaml")
    msg = str(err.value)
    expected = [
        "batch.shards: ",
        "batch.depth: unknown key",
        "sets.home.size: must be a positive integer",
        "sets.home.rules[0]: unknown rule 'daily_shuffel' (did you mean 'daily_shuffle'?)",
        "sets.home.rules[1] (series_cap): unknown parameter 'max_per_serie' (did you mean 'max_per_series'?)",
        "sets.home.rules[2] (limit).n: ",
        "sets.home.rules[3] (max_consecutive).column: ",
        "sets.home.rules[4] (kids_guard).adult_only: ",
        "sets.home.rules[5]: a rule is a name or a one-key mapping",
        "experiments[0].arms: weights must be positive",
        "experiments[1].control: 'c' is not one of the arms",
        "experiments[1].surface: 'x' is not a configured set",
        "extra: unknown top-level key",
    ]
    for part in expected:
        assert part in msg, part
    assert msg.startswith("sets.yaml: 13 problem(s)")


def test_missing_and_malformed_files_fail_clearly(tmp_path: Path):
    with pytest.raises(SetsConfigError, match="not found"):
        load_sets_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sets: [unclosed")
    with pytest.raises(SetsConfigError, match="not valid YAML"):
        load_sets_config(bad)


def test_the_repeat_listen_policy_keeps_at_most_n_replays_in_the_top_k() -> None:
    from recsys_platform.batch.rules import limit_replays, played_pairs

    items = list("ABCDEFGHIJ")
    frame = pl.DataFrame({"user_id": ["u"] * 10, "rank": list(range(1, 11)), "item_id": items, "score": [10.0] * 10})
    events = pl.DataFrame(
        {
            "user_id": ["u"] * 6 + ["v"],
            "item_id": ["A", "B", "C", "D", "E", "E", "F"],
            "event_type": ["content_start"] * 5 + ["favorite", "content_start"],
        }
    )
    played = played_pairs(events)
    assert set(played.rows()) == {("u", "A", False), ("u", "B", False), ("u", "C", False), ("u", "D", False),
                                  ("u", "E", True), ("v", "F", False)}  # fmt: skip
    out = limit_replays(frame, played, n=2, top=5)
    # A, B count; C and D move to just after position 5; E is a favourite and stays; F was played by v, not u
    assert out["item_id"].to_list() == ["A", "B", "E", "F", "G", "C", "D", "H", "I", "J"]
    assert out["rank"].to_list() == list(range(1, 11))
    assert limit_replays(frame, played, n=-1, top=5)["item_id"].to_list() == items  # off
    counted = limit_replays(frame, played, n=2, top=5, favourites_exempt=False)["item_id"].to_list()
    assert counted[:5] == ["A", "B", "F", "G", "H"]
