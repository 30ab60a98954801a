"""The Arbitrage page: it renders the stored reports with their figures and plots, guarded."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pytest
import sqlalchemy as sa
from fastapi import HTTPException, Request
from fastapi.testclient import TestClient
from markupsafe import escape
from sqlalchemy.engine import Engine

from pipeline.arbitrage.page import create_app
from pipeline.arbitrage.report import save_report
from pipeline.arbitrage.study_config import CAVEATS, Group, StudyConfig
from pipeline.arbitrage.study_edges import study_cross
from pipeline.arbitrage.study_plot import plot_group as draw
from pipeline.arbitrage.study_stats import Series, align
from pipeline.db.engine import create_engine
from pipeline.db.schema import arbitrage_reports
from pipeline.settings import Market

HOUR = 3_600_000
DAY_MS = 1_615_593_600_000  # 2021-03-13T00:00Z
GROUP = Group(
    "cross",
    (Market.model_validate("alpha:BTC/USD:1h"), Market.model_validate("beta:BTC/USD:1h")),
)
CONFIG = StudyConfig(
    threshold_bps=10.0,
    taker_fee_bps=10.0,
    max_notional=1_000.0,
    home="USD",
    quote_rates={"USD": 1.0},
)


@pytest.fixture(scope="module")
def stored(migrated_engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One report row with a plot (beta 1% above alpha for 3 of 24 hours), one without."""
    with migrated_engine.begin() as conn:
        conn.execute(arbitrage_reports.delete())
    ts = [DAY_MS + i * HOUR for i in range(24)]
    beta = [10_100.0 if 5 <= i < 8 else 10_000.0 for i in range(24)]
    series = [Series.of(ts, [10_000.0] * 24, [50.0] * 24), Series.of(ts, beta, [50.0] * 24)]
    aligned = align(series, ["alpha", "beta"], DAY_MS, DAY_MS + 24 * HOUR, HOUR)
    studied = study_cross(GROUP, aligned, CONFIG)
    plot = draw(studied, CONFIG.threshold_bps, tmp_path_factory.mktemp("plots") / "p.png")
    stats = studied.result | {"threshold_bps": 10.0}
    day = save_report(migrated_engine, GROUP, DAY_MS, DAY_MS + 24 * HOUR, stats, plot)
    earlier = save_report(migrated_engine, GROUP, DAY_MS - 24 * HOUR, DAY_MS, stats, None)
    return {"engine": migrated_engine, "ids": (day, earlier), "stats": stats}


@pytest.fixture(scope="module")
def client(stored: dict) -> TestClient:
    return TestClient(create_app(lambda: stored["engine"]))


def test_the_data_endpoint_lists_the_newest_reports_first_with_their_headline(
    client: TestClient, stored: dict
) -> None:
    day, earlier = stored["ids"]
    reports = client.get("/api/reports").json()
    assert [r["id"] for r in reports] == [day, earlier]
    newest = reports[0]
    assert newest["group"] == GROUP.name
    assert (newest["observations"], newest["slots"]) == (24, 24)
    assert newest["share_above"] == pytest.approx(3 / 24)
    assert newest["longest_run_minutes"] == 180.0
    assert newest["has_plot"] is True
    assert reports[1]["has_plot"] is False


def test_the_page_shows_the_caveats_the_figures_and_the_plot(
    client: TestClient, stored: dict
) -> None:
    day, earlier = stored["ids"]
    response = client.get("/")
    assert response.status_code == 200
    html = response.text
    for caveat in CAVEATS:
        assert str(escape(caveat)) in html
    assert GROUP.name in html
    assert "12.50%" in html
    assert "180 min" in html
    assert f'src="plots/{day}.png"' in html
    assert f'src="plots/{earlier}.png"' not in html


def test_the_plot_endpoint_serves_the_png_and_404s_without_one(
    client: TestClient, stored: dict
) -> None:
    day, earlier = stored["ids"]
    response = client.get(f"/plots/{day}.png")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get(f"/plots/{earlier}.png").status_code == 404
    assert client.get("/plots/999999.png").status_code == 404


def test_a_plot_in_another_store_is_served_from_there_and_404s_once_gone(
    client: TestClient, stored: dict
) -> None:
    elsewhere = "memory://artifacts/plots/ab/abcdef.png"
    with fsspec.open(elsewhere, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\nfrom the store")
    with stored["engine"].connect() as conn:
        stats = conn.execute(
            sa.select(arbitrage_reports.c.stats).where(arbitrage_reports.c.id == stored["ids"][0])
        ).scalar_one()
    row = save_report(
        stored["engine"], GROUP, DAY_MS - 48 * HOUR, DAY_MS - 24 * HOUR, stats, elsewhere
    )
    try:
        assert client.get(f"/plots/{row}.png").content.endswith(b"from the store")
        fsspec.filesystem("memory").rm(elsewhere)
        assert client.get(f"/plots/{row}.png").status_code == 404
    finally:
        with stored["engine"].begin() as conn:
            conn.execute(arbitrage_reports.delete().where(arbitrage_reports.c.id == row))


def test_an_empty_table_says_where_reports_come_from(tmp_path: Path) -> None:
    from pipeline.db.migrate import upgrade

    engine = create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    upgrade(engine)
    app = TestClient(create_app(lambda: engine))
    assert app.get("/api/reports").json() == []
    assert "No arbitrage reports yet" in app.get("/").text


def test_an_unreachable_database_is_a_503_naming_it() -> None:
    app = create_app(lambda: create_engine("postgresql://postgres@127.0.0.1:1/none"))
    response = TestClient(app).get("/api/reports")
    assert response.status_code == 503
    assert "arbitrage reports' database is unreachable" in response.json()["detail"]


def test_the_guard_protects_every_route(stored: dict) -> None:
    def guard(request: Request) -> None:
        if request.headers.get("authorization") != "Bearer ok":
            raise HTTPException(401, "Not authenticated")

    app = TestClient(create_app(lambda: stored["engine"], guard=guard))
    day, _ = stored["ids"]
    for path in ("/", "/api/reports", f"/plots/{day}.png"):
        assert app.get(path).status_code == 401, path
        assert app.get(path, headers={"Authorization": "Bearer ok"}).status_code == 200, path


def test_a_report_row_is_json_with_the_study_result(stored: dict) -> None:
    day, _ = stored["ids"]
    with stored["engine"].connect() as conn:
        stats = conn.execute(
            sa.select(arbitrage_reports.c.stats).where(arbitrage_reports.c.id == day)
        ).scalar_one()
    assert [s["label"] for s in stats["series"]] == ["buy alpha sell beta", "buy beta sell alpha"]
    assert stats["series"][0]["inventory"]["base_currency"] == "BTC"
    assert stats["series"][0]["above"]["count"] == 3
