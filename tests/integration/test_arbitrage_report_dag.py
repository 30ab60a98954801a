"""The arbitrage_report DAG: it parses light, Airflow runs it on a day of stored candles
(`dag.test()`), it writes one report row per group, and the Arbitrage page inside Airflow's
API server shows them to a signed-in user only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import fsspec
import pytest
import sqlalchemy as sa

from tests.support.airflow import airflow_env as isolated_airflow_env
from tests.support.airflow import migrated_home, run_python
from tests.support.exchange import exchange_client

DAY = datetime(2021, 3, 13, tzinfo=UTC)
HEAVY = ["tensorflow", "ccxt", "pandas", "great_expectations", "onnx", "tf2onnx", "numpy"]
TRIANGLE = ["binance:BTC/USDT:1h", "binance:ETH/USDT:1h", "binance:ETH/BTC:1h"]
VENUES = ["bitstamp:BTC/USD:1h", "gemini:BTC/USD:1h"]


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory, airflow_metadata: Path) -> dict[str, str]:
    """An isolated Airflow (SQLite metadata) over this repo's dags/ and plugins/."""
    home = migrated_home(tmp_path_factory.mktemp("airflow"), airflow_metadata)
    (home / "passwords.json").write_text(json.dumps({"admin": "secret-pw"}))
    env = isolated_airflow_env(home) | {
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "CRYPTOBOTS_VAR_DIR": str(home / "var"),
        "CRYPTOBOTS_ARTIFACT_ROOT": (home / "artifacts").as_uri(),
        "CRYPTOBOTS_ARBITRAGE__TRIANGLES": json.dumps([TRIANGLE]),
        "CRYPTOBOTS_ARBITRAGE__VENUE_GROUPS": json.dumps([VENUES]),
    }
    return env


@pytest.fixture(scope="module")
def reported(airflow_env: dict, pg_server, data_dir) -> Iterator[dict]:
    """A Postgres database with 2021-03-13 of the 1h triangle stored (the venue group has
    nothing that day), then one `dag.test()` run of arbitrage_report for that day."""
    import uuid

    from pipeline.data.backfill import backfill
    from pipeline.db.engine import create_engine
    from pipeline.db.migrate import upgrade
    from pipeline.exchanges.simulator.app import SimulatorConfig, running
    from pipeline.settings import Market
    from tests.support.postgres import PG_SERVER_URL

    name = f"cb_arbitrage_dag_{uuid.uuid4().hex[:8]}"
    with pg_server.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(PG_SERVER_URL).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    upgrade(engine)
    start = int(DAY.timestamp() * 1000)
    with running(SimulatorConfig(data_dir=data_dir)) as sim:
        client = exchange_client(sim.url)
        for market in TRIANGLE:
            backfill(client, engine, Market.model_validate(market), start, start + 86_400_000)
    env = airflow_env | {"CRYPTOBOTS_DB_URL": url}
    run = run_python(
        """
        import json, pendulum
        from airflow.dag_processing.dagbag import DagBag
        dag = DagBag(dag_folder="dags").dags["arbitrage_report"]
        run = dag.test(logical_date=pendulum.datetime(2021, 3, 14, tz="UTC"))
        tis = run.get_task_instances()
        print(json.dumps({
            "state": str(run.state),
            "tasks": sorted((ti.task_id, ti.map_index, str(ti.state)) for ti in tis),
            "results": [ti.xcom_pull(task_ids=ti.task_id, map_indexes=ti.map_index) for ti in tis],
        }))
        """,
        env,
    )
    yield {"engine": engine, "url": url, "env": env, "run": run}
    engine.dispose()
    with pg_server.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.mark.postgres
def test_dag_parses_light_daily_and_maps_one_study_per_configured_group(airflow_env: dict):
    report = run_python(
        f"""
        import importlib.util, json, sys
        from airflow.sdk import BaseHook
        from airflow.models import Variable

        def forbidden(*args, **kwargs):
            raise RuntimeError("connection or variable look-up while parsing a DAG file")

        BaseHook.get_connection = classmethod(forbidden)
        Variable.get = staticmethod(forbidden)
        before = set(sys.modules)
        path = "dags/arbitrage_report.py"
        spec = importlib.util.spec_from_file_location("arbitrage_report", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        heavy = sorted({{m.split(".")[0] for m in set(sys.modules) - before}} & set({HEAVY!r}))
        dag = module.dag_object
        print(json.dumps({{
            "heavy": heavy, "dag_id": dag.dag_id, "tags": sorted(dag.tags),
            "retries": [t.retries for t in dag.tasks], "doc_md": bool(dag.doc_md),
            "max_active_runs": dag.max_active_runs, "groups": module.GROUPS,
            "timetable": type(dag.timetable).__name__, "summary": dag.timetable.summary,
        }}))
        """,
        airflow_env,
    )
    assert report["heavy"] == []
    assert report["dag_id"] == "arbitrage_report"
    assert "cryptobots" in report["tags"]
    assert min(report["retries"]) >= 1
    assert report["doc_md"]
    assert report["max_active_runs"] >= 1
    assert report["groups"] == ["triangle:0", "cross:0"]
    assert report["timetable"] == "CronDataIntervalTimetable"
    assert report["summary"] == "0 0 * * *"


def test_daily_run_studies_the_previous_day_and_writes_a_row_and_plot_per_group(reported: dict):
    assert reported["run"]["state"] == "success", reported["run"]["tasks"]
    assert [t[2] for t in reported["run"]["tasks"]] == ["success", "success"]
    with reported["engine"].connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT kind, group_name, interval_start, interval_end, stats, plot_path "
                "FROM arbitrage_reports ORDER BY kind DESC"
            )
        ).all()
    assert [(r.kind, r.interval_start, r.interval_end) for r in rows] == [
        ("triangle", DAY, datetime(2021, 3, 14, tzinfo=UTC)),
        ("cross", DAY, datetime(2021, 3, 14, tzinfo=UTC)),
    ]
    triangle, cross = rows
    assert triangle.group_name == "binance BTC/USDT ETH/USDT ETH/BTC 1h"
    assert (triangle.stats["slots"], triangle.stats["observations"]) == (24, 24)
    assert triangle.stats["best"]["distribution"]["count"] == 24
    assert (cross.stats["slots"], cross.stats["observations"]) == (24, 0)
    assert cross.stats["dropped"]["missing"] == 24  # nothing stored: dropped, never an edge
    for row in rows:
        assert row.plot_path.startswith(reported["env"]["CRYPTOBOTS_ARTIFACT_ROOT"]), (
            "the plot goes to the artifact store, not the worker's scratch space"
        )
        with fsspec.open(row.plot_path, "rb") as handle:
            assert handle.read()[:4] == b"\x89PNG"
        assert row.stats["plot"] == row.plot_path
    assert sorted(r["observations"] for r in reported["run"]["results"]) == [0, 24]


@pytest.mark.postgres
def test_rerunning_an_interval_replaces_its_row(reported: dict) -> None:
    from pipeline.arbitrage.report import report_interval
    from pipeline.settings import Settings

    settings = Settings(
        db_url=reported["url"],
        var_dir=reported["env"]["CRYPTOBOTS_VAR_DIR"],
        artifact_root=reported["env"]["CRYPTOBOTS_ARTIFACT_ROOT"],
        arbitrage={"triangles": [TRIANGLE], "venue_groups": [VENUES]},
    )
    start = int(DAY.timestamp() * 1000)
    with reported["engine"].connect() as conn:
        before = conn.execute(sa.text("SELECT id, kind FROM arbitrage_reports")).all()
    again = report_interval(settings, "triangle:0", start, start + 86_400_000)
    with reported["engine"].connect() as conn:
        after = conn.execute(sa.text("SELECT id, kind FROM arbitrage_reports")).all()
    assert sorted(after) == sorted(before)
    assert again["id"] in {row.id for row in before if row.kind == "triangle"}


INSIDE_AIRFLOW = """
import json
from fastapi.testclient import TestClient
from airflow.api_fastapi.app import create_app

report = {}
with TestClient(create_app()) as client:
    report["anonymous"] = client.get("/cryptobots-arbitrage/api/reports").status_code
    token = client.post(
        "/auth/token", json={"username": "admin", "password": "secret-pw"}
    ).json()["access_token"]
    client.cookies.set("_token", token)
    page = client.get("/cryptobots-arbitrage/")
    reports = client.get("/cryptobots-arbitrage/api/reports").json()
    plot = client.get(f"/cryptobots-arbitrage/plots/{reports[0]['id']}.png")
    report["page"] = [page.status_code, page.text]
    report["reports"] = reports
    report["plot"] = [plot.status_code, plot.headers.get("content-type")]
    plugins = client.get("/api/v2/plugins").json()["plugins"]
    report["views"] = [v for p in plugins for v in p["external_views"]]
print(json.dumps(report, default=str))
"""


@pytest.mark.postgres
def test_the_arbitrage_page_inside_airflow_needs_a_login_and_shows_the_reports(reported: dict):
    report = run_python(INSIDE_AIRFLOW, reported["env"])
    assert report["anonymous"] == 401
    status, html = report["page"]
    assert status == 200
    assert "binance BTC/USDT ETH/USDT ETH/BTC 1h" in html
    assert "Candle closes are not simultaneous quotes" in html
    assert [r["kind"] for r in report["reports"]] == ["triangle", "cross"]
    assert f'src="plots/{report["reports"][0]["id"]}.png"' in html
    assert report["plot"] == [200, "image/png"]
    assert ("Arbitrage", "cryptobots-arbitrage/", "arbitrage", "nav") in {
        (v["name"], v["href"], v["url_route"], v["destination"]) for v in report["views"]
    }
