"""Experiment arms change what the API serves (set, popularity or model, per the config's `serves`, re-read
without a restart), a user's named sets are served from the active slot, and every served list is logged off the
request path into the landing zone, loaded per hour into the `served_log` table and its catalog view."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest
import yaml
from fastapi.testclient import TestClient

from assets.ingestion import served_log
from recsys_platform import schemas
from recsys_platform.analytics.duckdb_catalog import build_catalog
from recsys_platform.batch.set_config import SetsConfigError, load_sets_config, parse_sets_config
from recsys_platform.config import PROJECT_ROOT
from recsys_platform.experiments.ab_tests import arm_of, assign_arms
from recsys_platform.ingest.landing import LocalLandingZone
from recsys_platform.serve import arms as arms_module
from recsys_platform.serve import deployment
from recsys_platform.serve.api import create_app
from recsys_platform.serve.online_store import open_online_store
from recsys_platform.serve.served_log import ServedLog
from resources import LakeIOManager, LandingZoneResource

SHIPPED = PROJECT_ROOT / "config" / "recommendation_sets.yaml"


def serving_config_text() -> str:
    """The shipped set file with its example experiment's `serves` switched on (shipped commented out)."""
    text = SHIPPED.read_text()
    assert "# serves: {" in text
    return text.replace("# serves: {", "serves: {")


def _list(prefix: str, n: int = 5) -> str:
    return json.dumps({"items": [{"item_id": f"{prefix}{i}", "score": float(n - i)} for i in range(n)]})


def _users_by_arm(experiment) -> dict[str, str]:
    """One user id per arm."""
    out: dict[str, str] = {}
    for i in range(200):
        out.setdefault(arm_of(f"u{i}", experiment), f"u{i}")
    return out


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    for name in ("RECSYS_LANDING_URL", "RECSYS_LAKE_URL", "RECSYS_ONLINE_STORE_URL", "RECSYS_READ_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("RECSYS_SERVED_LOG", raising=False)
    config = tmp_path / "sets.yaml"
    config.write_text(serving_config_text())
    monkeypatch.setenv("RECSYS_RECOMMENDATION_SETS", str(config))
    monkeypatch.setattr(arms_module, "RELOAD_CHECK_SECONDS", 0.0)
    experiment = load_sets_config(config).experiments[0]
    users = _users_by_arm(experiment)
    recs = {u: _list(f"model-{u}-") for u in users.values()}
    sets = {u: json.dumps({"recommended_for_you": json.loads(_list(f"set-{u}-"))}) for u in users.values()}
    payload = {"recs": recs, "sets": sets, "popular": {"__global__": _list("pop-")}, "user_features": {}}
    with open_online_store(f"sqlite:///{tmp_path / 'online_store.sqlite'}") as store:
        deployment.deploy(store, "7", "snap-7", payload)
    return {"root": tmp_path, "config": config, "experiment": experiment, "users": users}


def test_arm_of_is_assign_arms_for_one_user() -> None:
    experiment = load_sets_config(SHIPPED).experiments[0]
    ids = [f"user-{i}" for i in range(3000)]
    assert [arm_of(i, experiment) for i in ids] == assign_arms(ids, experiment)["arm"].to_list()


def test_each_arm_is_served_its_source_and_an_edit_applies_without_a_restart(home: dict) -> None:
    users = home["users"]
    assert set(users) == {"control", "popularity", "model"}
    with TestClient(create_app()) as c:
        got = {arm: c.get(f"/v1/users/{u}/recommendations", params={"limit": 3}).json() for arm, u in users.items()}
        assert {arm: (doc["experiment"], doc["arm"]) for arm, doc in got.items()} == {
            arm: ("home_carousel_v1", arm) for arm in users
        }
        assert got["control"]["source"] == "recommendation_set"
        assert got["control"]["items"][0]["item_id"] == f"set-{users['control']}-0"
        assert got["popularity"]["source"] == "popularity" and got["popularity"]["items"][0]["item_id"] == "pop-0"
        assert got["model"]["source"] == "personalized"
        assert got["model"]["items"][0]["item_id"] == f"model-{users['model']}-0"
        # the popularity arm now gets the model's list: edited in the file, applied on the next request
        doc = yaml.safe_load(home["config"].read_text())
        doc["experiments"][0]["serves"]["popularity"] = "model"
        home["config"].write_text(yaml.safe_dump(doc, sort_keys=False))  # arm order decides the buckets
        again = c.get(f"/v1/users/{users['popularity']}/recommendations").json()
        assert again["source"] == "personalized" and again["arm"] == "popularity"
        # a user's named set, over the API
        one = c.get(f"/v1/users/{users['model']}/sets/recommended_for_you", params={"limit": 2}).json()
        assert [i["item_id"] for i in one["items"]] == [f"set-{users['model']}-0", f"set-{users['model']}-1"]
        assert c.get("/v1/users/nobody/sets/recommended_for_you").status_code == 404


def test_a_config_that_stops_validating_keeps_the_last_good_experiments(home: dict) -> None:
    with TestClient(create_app()) as c:
        user = home["users"]["popularity"]
        assert c.get(f"/v1/users/{user}/recommendations").json()["source"] == "popularity"
        home["config"].write_text(home["config"].read_text().replace("serves: {", "serves: {bogus: model, "))
        assert c.get(f"/v1/users/{user}/recommendations").json()["source"] == "popularity"
    with pytest.raises(SetsConfigError, match="serves.bogus: not one of the arms"):
        load_sets_config(home["config"])
    raw = yaml.safe_load(serving_config_text())
    raw["experiments"][0]["serves"] = {"model": "editorial"}
    with pytest.raises(SetsConfigError, match="source 'editorial' is not one of"):
        parse_sets_config(raw)


def test_served_lists_are_logged_and_queryable_in_the_catalog(home: dict) -> None:
    users = home["users"]
    with TestClient(create_app()) as c:
        for arm, user in users.items():
            response = c.get(f"/v1/users/{user}/recommendations", params={"limit": 2}, headers={"X-Request-ID": arm})
            assert response.status_code == 200
    zone = LocalLandingZone(home["root"] / "landing")
    files = zone.list_files("served/")
    assert files, "the served log was not flushed at shutdown"
    hour = files[0].key.split("/")
    partition = f"{hour[1][3:]}-{hour[2][3:]}:00"
    resources = {
        "landing": LandingZoneResource(url=str(home["root"] / "landing")),
        "io_manager": LakeIOManager(base_url=str(home["root"] / "lake")),
    }
    result = dg.materialize([served_log], partition_key=partition, resources=resources)
    assert result.asset_materializations_for_node("served_log")[0].metadata["lists_served"].value == 3
    table = pl.read_parquet(home["root"] / "lake" / "served_log" / f"{partition}.parquet")
    rows = {r["request_id"]: r for r in table.iter_rows(named=True)}
    assert set(rows) == {"control", "popularity", "model"}
    assert rows["popularity"]["source"] == "popularity" and rows["popularity"]["item_ids"] == ["pop-0", "pop-1"]
    assert rows["model"]["user_id"] == users["model"] and rows["model"]["model_version"] == "7"
    assert {r["experiment"] for r in rows.values()} == {"home_carousel_v1"}
    catalog = home["root"] / "catalog.duckdb"
    assert "served_log" in build_catalog(catalog, str(home["root"] / "lake"), ["served_log"])
    with duckdb.connect(str(catalog), read_only=True) as con:
        by_arm = dict(con.execute("SELECT arm, count(*) FROM served_log GROUP BY arm").fetchall())
    assert by_arm == {"control": 1, "popularity": 1, "model": 1}


def test_the_served_log_can_be_turned_off(home: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_SERVED_LOG", "0")
    with TestClient(create_app()) as c:
        assert c.get(f"/v1/users/{home['users']['model']}/recommendations").status_code == 200
    assert LocalLandingZone(home["root"] / "landing").list_files("served/") == []


def test_the_shipped_example_experiment_changes_nothing_served_until_it_declares_serves(home: dict) -> None:
    home["config"].write_text(SHIPPED.read_text())  # `serves` commented out, as shipped
    with TestClient(create_app()) as c:
        for user in home["users"].values():
            doc = c.get(f"/v1/users/{user}/recommendations").json()
            assert (doc["source"], doc["experiment"], doc["arm"]) == ("personalized", None, None)
    assert not load_sets_config(SHIPPED).experiments[0].changes_serving


class _FlakyZone(LocalLandingZone):
    down = True

    def write_bytes(self, key: str, data: bytes) -> None:
        if self.down:
            raise OSError("landing zone down")
        super().write_bytes(key, data)


def _record(log: ServedLog, request_id: str, user_id: str, item_ids: list[str]) -> None:
    log.record(
        request_id=request_id,
        surface="api",
        user_id=user_id,
        experiment=None,
        arm=None,
        source="personalized",
        model_version="3",
        slot="blue",
        item_ids=item_ids,
    )


def test_the_served_log_buffer_forgets_a_user_and_keeps_rows_through_a_failed_write(tmp_path: Path) -> None:
    zone = _FlakyZone(tmp_path)
    log = ServedLog(lambda: zone)
    _record(log, "r1", "u1", ["a", "b"])
    _record(log, "r2", "gone", ["c"])
    _record(log, "r3", "u2", [])
    assert log.forget("gone") == 1 and log.forget("nobody") == 0 and log.buffered == 2
    asyncio.run(log.flush())  # fails: the rows stay buffered, ahead of the ones recorded since
    assert log.buffered == 2 and log.files_written == 0
    _record(log, "r4", "u1", ["d"])
    zone.down = False
    asyncio.run(log.flush())
    assert log.buffered == 0 and log.files_written == 1
    (file,) = list((tmp_path / "served").rglob("*.parquet"))
    got = pl.read_parquet(file)
    assert got.columns == list(schemas.SERVED_LOG_SCHEMA)
    assert got["request_id"].to_list() == ["r1", "r3", "r4"]
    assert got["user_id"].to_list() == ["u1", "u2", "u1"]
    assert got["item_ids"].to_list() == [["a", "b"], [], ["d"]]
    assert got["served_at"].dtype == pl.Datetime("us", "UTC") and got["served_at"].is_sorted()
