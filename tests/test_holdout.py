"""Holdouts of an interactions file (the three protocols, writing a part back in its format) and the
baselines fitted on a holdout's train rows with the product's candidate sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys_platform.model.params import ModelParams
from recsys_platform.quality_benchmark.baselines import fit_baseline, pair_history, pick_ease_l2, top_k_unseen
from recsys_platform.quality_benchmark.holdout import (
    ITEM,
    TIME,
    USER,
    InteractionsFile,
    TableColumns,
    epoch_seconds,
    per_user_temporal,
    read_interactions,
    sample_users,
    split,
    write_part,
)

DAY = 86400


def _rows(triples: list[tuple[str, str, float]]) -> pl.DataFrame:
    users, items, times = zip(*triples, strict=True)
    return pl.DataFrame({USER: users, ITEM: items, TIME: [float(t) for t in times]})


def _pairs(frame: pl.DataFrame) -> set[tuple[str, str]]:
    return set(frame.select(USER, ITEM).iter_rows())


def test_per_user_holds_out_each_users_newest_fifth_and_keeps_short_histories_whole():
    rows = _rows(
        [("a", f"i{n}", n) for n in range(4)]  # 4 rows: fewer than 5, all train
        + [("b", f"i{n}", 10 * n) for n in range(5)]  # 5 rows: round(4.0) = 4 train, 1 test
        + [("c", f"i{n}", n) for n in range(7)]  # 7 rows: round(5.6) = 6 train, 1 test
        + [("d", f"i{n}", 100 - n) for n in range(10)]  # 10 rows, newest first in the file: 8 train, 2 test
    )
    train, test = per_user_temporal(rows)
    assert _pairs(test) == {("b", "i4"), ("c", "i6"), ("d", "i0"), ("d", "i1")}
    assert train.height + test.height == rows.height and not (_pairs(train) & _pairs(test))


def test_per_user_breaks_ties_in_time_by_item_id_whatever_the_row_order():
    tied = [("u", item, 5) for item in ("i3", "i1", "i4", "i0", "i2")]  # one second, five items
    for order in (tied, tied[::-1]):
        _, test = per_user_temporal(_rows(order))
        assert _pairs(test) == {("u", "i4")}  # the largest item id is the "newest"


def test_global_holds_out_the_newest_tenth_of_the_rows_for_users_seen_before_it():
    # 21 rows (days 0..15, 16 twice, 17, 18, 19): the 90% quantile ("lower") is the sorted value at position
    # 0.9 x 20 = 18, day 17, so the rows of days 17, 18, 19 are the newest tenth (rounded to whole rows)
    rows = _rows(
        [("a", f"x{d}", d * DAY) for d in range(0, 17, 2)]  # a: days 0, 2, ..., 16
        + [("c", f"y{d}", d * DAY) for d in range(1, 17, 2)]  # c: days 1, 3, ..., 15
        + [("c", "q", 16 * DAY), ("a", "z", 17 * DAY), ("b", "w", 18 * DAY), ("c", "v", 19 * DAY)]
    )
    holdout = split(InteractionsFile(Path("f"), "table", rows), "global")
    assert holdout.cutoff_s == 17 * DAY
    assert holdout.train.height == 18
    assert _pairs(holdout.test) == {("a", "z"), ("c", "v")}  # b has nothing before the cutoff: not a test user


def test_random_is_the_stratified_split_per_seed():
    rng = np.random.default_rng(0)
    rows = _rows([(f"u{u}", f"i{i}", rng.integers(1e6)) for u in range(20) for i in range(u % 7 + 1)])
    data = InteractionsFile(Path("f"), "table", rows)
    a, b, other = split(data, "random", 5), split(data, "random", 5), split(data, "random", 6)
    assert _pairs(a.test) == _pairs(b.test) and _pairs(a.test) != _pairs(other.test)
    per_user = a.train.group_by(USER).len().join(rows.group_by(USER).len(), on=USER, suffix="_all")
    assert (per_user["len"] == (per_user["len_all"] * 0.75).round()).all()  # round(0.75 n) of each user's rows
    with pytest.raises(ValueError, match="needs a seed"):
        split(data, "random")


def test_times_read_as_epoch_seconds_from_seconds_milliseconds_iso_and_datetimes():
    want = [1_600_000_000.0, 1_600_000_060.5]
    assert epoch_seconds(pl.Series([1_600_000_000.0, 1_600_000_060.5])).to_list() == want
    assert epoch_seconds(pl.Series([1_600_000_000_000, 1_600_000_060_500])).to_list() == want
    assert epoch_seconds(pl.Series(["2020-09-13T12:26:40Z", "2020-09-13T12:27:40.5Z"])).to_list() == want


RATINGS = pl.DataFrame(
    {
        "user_id": ["1", "1", "2"],
        "item_id": ["10", "20", "10"],
        "rating": [5.0, 3.0, 1.0],
        "timestamp": [874965478, 874965500, 875000000],
    }  # fmt: skip
)


def _write_movielens(root: Path, fmt: str) -> Path:
    if fmt == "recbole":
        directory = root / "ml-tiny"
        directory.mkdir()
        lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
        lines += [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in RATINGS.iter_rows()]
        (directory / "ml-tiny.inter").write_text("\n".join(lines) + "\n")
        (directory / "ml-tiny.item").write_text("item_id:token\tmovie_title:token_seq\n10\tTen\n20\tTwenty\n")
        return directory
    if fmt == "udata":
        (root / "ml-tiny").mkdir()
        RATINGS.write_csv(root / "ml-tiny" / "u.data", separator="\t", include_header=False)
        return root / "ml-tiny" / "u.data"
    RATINGS.rename({"user_id": "userId", "item_id": "movieId"}).write_csv(root / "ratings.csv")
    return root / "ratings.csv"


@pytest.mark.parametrize("fmt", ["recbole", "udata", "ratings_csv"])
def test_a_movielens_part_is_written_back_in_its_own_format(tmp_path, fmt):
    (tmp_path / "src").mkdir()
    data = read_interactions(_write_movielens(tmp_path / "src", fmt))
    assert data.format == fmt
    part = data.rows.filter(pl.col(USER) == "1")
    written = write_part(data, part, tmp_path / "out")
    assert written.parent.name == data.path.parent.name or written.name == data.path.name  # same dataset name
    again = read_interactions(written)
    assert again.format == fmt
    assert again.rows.sort(TIME).equals(part.sort(TIME))
    if fmt == "recbole":  # side tables travel with the interactions
        assert (written / "ml-tiny.item").read_text() == (data.path / "ml-tiny.item").read_text()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_table_part_keeps_every_source_column(tmp_path, suffix):
    table = RATINGS.rename({"user_id": "uid", "item_id": "sku"}).with_columns(kind=pl.lit("play"))
    path = tmp_path / f"events{suffix}"
    table.write_csv(path) if suffix == ".csv" else table.write_parquet(path)
    columns = TableColumns(user_id="uid", item_id="sku", timestamp="timestamp")
    data = read_interactions(path, columns)
    assert data.rows[USER].to_list() == ["1", "1", "2"] and data.n_items == 2
    written = write_part(data, data.rows.head(2), tmp_path / "out")
    assert written.name == path.name
    read = pl.read_csv if suffix == ".csv" else pl.read_parquet
    assert read(written).equals(read(path).head(2))
    with pytest.raises(ValueError, match="has no column when"):
        read_interactions(path, TableColumns("uid", "sku", "when"))


def test_a_user_sample_is_seeded_and_keeps_whole_users():
    rows = _rows([(f"u{u}", f"i{i}", i) for u in range(50) for i in range(3)])
    data = InteractionsFile(Path("f"), "table", rows)
    a, b = sample_users(data, 10), sample_users(data, 10)
    assert a.rows.equals(b.rows) and a.n_users == 10 and a.rows.height == 30
    assert sample_users(data, 500) is data


def test_baseline_lists_skip_seen_items_and_break_score_ties_by_item_id():
    # distinct users per item: x 3, y 2, z 2, w 1; u0 has seen x and y
    train = _rows([("u0", "x", 1), ("u0", "y", 2), ("u1", "x", 3), ("u1", "z", 4), ("u2", "x", 5), ("u2", "w", 6),
                   ("u3", "y", 7), ("u3", "z", 8)])  # fmt: skip
    history = pair_history(train, 9.0)
    recs = top_k_unseen(fit_baseline("pop", history, ModelParams()), history, pl.Series(["u0", "u2"]), 2)
    # u0: z (2 users) then w (1); u2: y and z tie at 2 users -> item id order
    assert recs.rows() == [("u0", "z", 1), ("u0", "w", 2), ("u2", "y", 1), ("u2", "z", 2)]
    with pytest.raises(ValueError, match="1 users have no train rows"):
        top_k_unseen(fit_baseline("pop", history, ModelParams()), history, pl.Series(["nobody"]), 2)


def test_ease_l2_is_picked_on_the_inner_split_of_the_train_rows_only():
    rng = np.random.default_rng(3)
    rows = _rows([(f"u{u}", f"i{(u + j * rng.integers(1, 4)) % 30}", j) for u in range(60) for j in range(12)])
    rows = rows.unique([USER, ITEM], keep="first")
    choice = pick_ease_l2(rows, "per-user", None, 5, grid=(1.0, 10.0, 100.0))
    assert set(choice.inner_ndcg) == {1.0, 10.0, 100.0}
    assert choice.inner_ndcg[choice.l2] == max(choice.inner_ndcg.values())
    assert "newest 20%" in choice.inner_split
