"""The Arbitrage page: the latest `arbitrage_reports` rows (one per group and day, written
by the `arbitrage_report` DAG) with their headline figures and plots, as HTML for the
Airflow UI and as JSON.

A FastAPI app over `pipeline/arbitrage/report.py`, mounted by the Airflow plugin
(`plugins/cryptobots_models.py`) beside the Models page with Airflow's own authorization
check as `guard`: only a signed-in user allowed to read the `arbitrage_report` DAG sees it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.engine import Engine

from pipeline.ui.pages import connected_engine, page_app, templates

REPORT_DAG_ID = "arbitrage_report"


def report_summaries(engine: Engine, limit: int = 50) -> list[dict[str, Any]]:
    """The newest reports, each with its headline figures (JSON-ready)."""
    from pipeline.arbitrage.report import latest_reports

    summaries = []
    for row in latest_reports(engine, limit):
        stats = row["stats"] or {}
        best = stats.get("best") or {}
        percentiles = (best.get("distribution") or {}).get("percentiles") or {}
        dropped = stats.get("dropped") or {}
        summaries.append(
            {
                "id": row["id"],
                "kind": row["kind"],
                "group": row["group_name"],
                "interval_start": row["interval_start"].isoformat(),
                "interval_end": row["interval_end"].isoformat(),
                "created_at": row["created_at"].isoformat(),
                "timeframe": stats.get("timeframe"),
                "slots": stats.get("slots", 0),
                "observations": stats.get("observations", 0),
                "missing": dropped.get("missing", 0),
                "quarantined": dropped.get("quarantined", 0),
                "median_bps": percentiles.get("p50"),
                "max_bps": (best.get("distribution") or {}).get("max"),
                "share_above": (best.get("above") or {}).get("share"),
                "threshold_bps": stats.get("threshold_bps"),
                "longest_run_minutes": (best.get("runs") or {}).get("max_minutes"),
                "profit": (best.get("profit") or {}).get("total"),
                "profit_currency": stats.get("profit_currency"),
                "has_plot": bool(row["plot_path"]),
            }
        )
    return summaries


def render_page(reports: list[dict[str, Any]], dag_id: str = REPORT_DAG_ID) -> str:
    """The HTML page (every link relative, so it works under any base URL and proxy)."""
    from pipeline.arbitrage.study_config import CAVEATS

    return (
        templates()
        .get_template("arbitrage.html")
        .render(reports=reports, dag_id=dag_id, caveats=CAVEATS)
    )


def create_app(
    get_engine: Callable[[], Engine],
    guard: Callable[..., Any] | None = None,
    dag_id: str = REPORT_DAG_ID,
) -> FastAPI:
    """The page (`/`), its data (`/api/reports`) and the plots (`/plots/{id}.png`).

    `guard` is a FastAPI dependency run before every route (Airflow's auth check in the
    plugin); without one the app is open, which only tests and local tools should use.
    """
    app = page_app("cryptobots arbitrage", guard)

    database = connected_engine(get_engine, "the arbitrage reports' database")

    @app.get("/", response_class=HTMLResponse)
    def page(limit: int = Query(50, ge=1, le=500)) -> str:
        return render_page(report_summaries(database(), limit), dag_id)

    @app.get("/api/reports")
    def reports(limit: int = Query(50, ge=1, le=500)) -> list[dict[str, Any]]:
        return report_summaries(database(), limit)

    @app.get("/plots/{report_id}.png")
    def plot(report_id: int) -> Response:
        from pipeline.arbitrage.report import plot_bytes

        payload = plot_bytes(database(), report_id)
        if payload is None:
            raise HTTPException(404, f"arbitrage report {report_id} has no stored plot")
        return Response(payload, media_type="image/png")

    return app
