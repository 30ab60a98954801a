"""The Models page: it serves the registry's content, guarded; inside Airflow's own API
server it answers only signed-in users and its Promote button's request triggers the
`promote` DAG."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from fastapi import HTTPException, Request
from fastapi.testclient import TestClient

from pipeline.db.engine import create_engine
from pipeline.learn.evaluate import backtest_positions, plot_equity
from pipeline.learn.export import Lineage, export_onnx
from pipeline.learn.features import FeatureSpec
from pipeline.learn.rl.networks import q_network
from pipeline.models.registry import alias, move_alias, register, set_metrics, store_artifact
from pipeline.ui.models_page import create_app
from tests.support.airflow import airflow_env, migrated_home
from tests.support.paths import REPO

SPEC = FeatureSpec(features=("ret_1", "ret_4"), mean=(0.0, 0.0), std=(1.0, 1.0))
NAME = "binance-btc-usdt-1h"
HOUR = 3_600_000


def equity_png(folder: Path) -> Path:
    """A real equity plot of a short backtest."""
    close = np.linspace(100.0, 120.0, 25)
    ts = np.arange(25) * HOUR
    backtests = {
        "policy": backtest_positions("policy", ts, close, close, np.ones(24), HOUR),
        "flat": backtest_positions("flat", ts, close, close, np.zeros(24), HOUR),
    }
    return plot_equity(backtests, folder / "equity.png", "test")


@pytest.fixture(scope="module")
def registry(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A Postgres registry: v1 champion (promoted with a hostile-looking reason), v2 a
    candidate with validation metrics and a stored equity plot."""
    from pipeline.db.migrate import upgrade

    folder = tmp_path_factory.mktemp("models_page")
    root = f"file://{folder / 'artifacts'}"
    engine = create_engine(pg_url)
    upgrade(engine)
    versions = []
    for seed in (1, 2):
        model = q_network(SPEC.dim + 1, 2, SPEC.mean, SPEC.std, seed=seed)
        lineage = Lineage("dqn", SPEC, (0.0, 1.0), f"run-{seed}", {"valid": [1, 2]}, "test")
        versions.append(
            register(engine, root, export_onnx(model, lineage, folder / f"p{seed}.onnx"), NAME)
        )
    plot_uri, _, _ = store_artifact(root, equity_png(folder), kind="plots", suffix=".png")
    validation = {
        "sharpe": 1.234,
        "total_return": 0.1,
        "max_drawdown": 0.05,
        "trades": 7.0,
        "exposure": 0.5,
    }
    walk_forward = {
        "folds": [{}] * 4,
        "median_sharpe": 1.5,
        "worst_drawdown": 0.12,
        "confidence": {"dsr": 0.91, "psr": 0.97, "sharpe_low": 0.4, "sharpe_high": 2.6},
    }
    set_metrics(
        engine,
        NAME,
        versions[1],
        {"validation": validation, "validation_plot": plot_uri, "walk_forward": walk_forward},
    )
    move_alias(engine, NAME, versions[0], seen_generation=None, who="alice", reason="<b>first</b>")
    return {"engine": engine, "url": pg_url, "root": root, "folder": folder, "versions": versions}


@pytest.fixture(scope="module")
def client(registry: dict) -> TestClient:
    return TestClient(create_app(lambda: registry["engine"]))


def test_the_data_endpoint_returns_the_registry_content(client: TestClient, registry: dict):
    first, second = registry["versions"]
    [model] = client.get("/api/models").json()
    assert model["name"] == NAME
    assert model["champion"] == first
    assert [v["version"] for v in model["versions"]] == [second, first]
    assert model["versions"][0]["validation"]["sharpe"] == pytest.approx(1.234)
    assert model["versions"][0]["has_plot"] is True
    assert model["versions"][1]["aliases"] == ["champion"]
    assert model["versions"][1]["has_plot"] is False
    assert [(e["who"], e["to_version"], e["reason"]) for e in model["history"]] == [
        ("alice", first, "<b>first</b>")
    ]


def test_the_page_lists_versions_with_metrics_champion_and_promote_buttons(
    client: TestClient, registry: dict
):
    first, second = registry["versions"]
    response = client.get("/")
    assert response.status_code == 200
    html = response.text
    assert f"champion v{first}" in html
    assert f'data-version="{second}">Promote</button>' in html
    assert f'data-version="{first}">Promote</button>' not in html, "the champion has no button"
    assert '<td class="num">1.23</td>' in html
    assert "5.0%" in html
    assert f'src="plots/{NAME}/{second}.png"' in html
    assert "api/v2/dags/${DAG_ID}/dagRuns" in html
    assert "&lt;b&gt;first&lt;/b&gt;" in html
    assert "<b>first</b>" not in html
    assert "DSR 0.91 · PSR 0.97<br>4 folds, median Sharpe 1.50<br>worst fold dd 12.0%" in html
    assert "none: one window only" in html


def test_a_model_without_a_champion_says_the_trader_stays_flat(fresh_pg, tmp_path: Path) -> None:
    engine = fresh_pg()
    model = q_network(SPEC.dim + 1, 2, SPEC.mean, SPEC.std, seed=3)
    lineage = Lineage("dqn", SPEC, (0.0, 1.0), "run-3", {"valid": [1, 2]}, "test")
    register(engine, f"file://{tmp_path}", export_onnx(model, lineage, tmp_path / "p.onnx"), NAME)
    html = TestClient(create_app(lambda: engine)).get("/").text
    assert "no champion: the trader stays flat until a candidate passes the gates" in html


def test_the_plot_endpoint_serves_the_stored_png(client: TestClient, registry: dict):
    first, second = registry["versions"]
    response = client.get(f"/plots/{NAME}/{second}.png")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get(f"/plots/{NAME}/{first}.png").status_code == 404
    missing = client.get(f"/plots/{NAME}/99.png")
    assert missing.status_code == 404
    assert "has no version 99" in missing.json()["detail"]


def test_an_empty_registry_says_how_to_get_a_model(fresh_pg) -> None:
    engine = fresh_pg()
    app = TestClient(create_app(lambda: engine))
    assert app.get("/api/models").json() == []
    assert "No model versions registered yet" in app.get("/").text


def test_an_unreachable_registry_is_a_503_naming_it() -> None:
    app = create_app(lambda: create_engine("postgresql://postgres@127.0.0.1:1/none"))
    response = TestClient(app).get("/api/models")
    assert response.status_code == 503
    assert "model registry's database is unreachable" in response.json()["detail"]


def test_the_guard_protects_every_route(registry: dict) -> None:
    def guard(request: Request) -> None:
        if request.headers.get("authorization") != "Bearer ok":
            raise HTTPException(401, "Not authenticated")

    app = TestClient(create_app(lambda: registry["engine"], guard=guard))
    second = registry["versions"][1]
    for path in ("/", "/api/models", f"/plots/{NAME}/{second}.png"):
        assert app.get(path).status_code == 401, path
        assert app.get(path, headers={"Authorization": "Bearer ok"}).status_code == 200, path


INSIDE_AIRFLOW = """
import json
from fastapi.testclient import TestClient
from airflow.api_fastapi.app import create_app

report = {}
with TestClient(create_app()) as client:
    report["anonymous"] = client.get("/cryptobots-models/api/models").status_code
    token = client.post(
        "/auth/token", json={"username": "admin", "password": "secret-pw"}
    ).json()["access_token"]
    client.cookies.set("_token", token)
    page = client.get("/cryptobots-models/")
    report["page"] = [page.status_code, "Promote</button>" in page.text]
    report["models"] = client.get("/cryptobots-models/api/models").json()
    plugins = client.get("/api/v2/plugins").json()["plugins"]
    report["views"] = [v for p in plugins for v in p["external_views"]]
    # the exact request the page's Promote button sends (relative to the Airflow root)
    body = {"logical_date": None, "conf": {"name": "%(name)s", "version": %(version)d,
            "force": False, "reason": "from the models page"}}
    triggered = client.post("/api/v2/dags/promote/dagRuns", json=body)
    report["trigger"] = [triggered.status_code, triggered.json()]
print(json.dumps(report, default=str))
"""


def test_inside_airflow_the_page_needs_a_login_and_its_button_triggers_promote(
    registry: dict, tmp_path: Path, airflow_metadata: Path
) -> None:
    home = migrated_home(tmp_path / "airflow", airflow_metadata)
    (home / "passwords.json").write_text(json.dumps({"admin": "secret-pw"}))
    env = airflow_env(home) | {
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "CRYPTOBOTS_DB_URL": registry["url"],
        "CRYPTOBOTS_VAR_DIR": str(home / "var"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "reserialize"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    second = registry["versions"][1]
    code = textwrap.dedent(INSIDE_AIRFLOW) % {"name": NAME, "version": second}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])

    assert report["anonymous"] == 401
    assert report["page"] == [200, True]
    assert [v["version"] for v in report["models"][0]["versions"]] == registry["versions"][::-1]
    assert report["models"][0]["champion"] == alias(registry["engine"], NAME)["version"]
    assert {(v["name"], v["href"], v["url_route"], v["destination"]) for v in report["views"]} == {
        ("Models", "cryptobots-models/", "models", "nav"),
        ("Arbitrage", "cryptobots-arbitrage/", "arbitrage", "nav"),
    }
    status, run = report["trigger"]
    assert status == 200, run
    assert run["dag_id"] == "promote"
    assert run["conf"]["version"] == second
    assert run["conf"]["name"] == NAME
    assert run["state"] == "queued"
