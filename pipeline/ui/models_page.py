"""The Models page: registered versions with their metrics and equity plots, the
champion and its promotion history, as HTML for the Airflow UI and as JSON.

A FastAPI app over `pipeline/models/registry/`. The Airflow plugin
(`plugins/cryptobots_models.py`) mounts it and passes Airflow's own authorization
check as `guard`, so the page, its data and its plots are only served to a signed-in
Airflow user allowed to read the `promote` DAG. The Promote button never promotes by
itself: it triggers the `promote` DAG through Airflow's REST API with the user's own
session, so every promotion runs the gates and leaves its audit row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.engine import Engine

from pipeline.models.registry import CHAMPION, get_version, list_versions, promotion_history
from pipeline.ui.pages import connected_engine, page_app, templates

PROMOTE_DAG_ID = "promote"
SHOWN_METRICS = ("sharpe", "total_return", "max_drawdown", "trades", "exposure")


def _plain(value: Any) -> Any:
    """Datetimes as ISO text, everything else as is (JSON-ready)."""
    return value.isoformat() if hasattr(value, "isoformat") else value


def model_summaries(engine: Engine, name: str | None = None) -> list[dict[str, Any]]:
    """Every model name with its champion, versions (newest first) and promotion history."""
    by_name: dict[str, dict[str, Any]] = {}
    for row in list_versions(engine, name):
        metrics = row["metrics"] or {}
        model = by_name.setdefault(
            row["name"], {"name": row["name"], "champion": None, "versions": [], "history": []}
        )
        if CHAMPION in row["aliases"]:
            model["champion"] = row["version"]
        model["versions"].append(
            {
                "version": row["version"],
                "algorithm": row["algorithm"],
                "status": row["status"],
                "aliases": row["aliases"],
                "created_at": _plain(row["created_at"]),
                "sha256": row["sha256"],
                "size": row["size"],
                "opset": row["opset"],
                "training_run": row["training_run"],
                "validation": metrics.get("validation", {}),
                "evidence": _evidence(metrics.get("walk_forward")),
                "has_plot": bool(metrics.get("validation_plot")),
            }
        )
    for model in by_name.values():
        model["history"] = [
            {key: _plain(value) for key, value in event.items()}
            for event in promotion_history(engine, model["name"])
        ]
    return list(by_name.values())


def _evidence(walk_forward: dict[str, Any] | None) -> dict[str, Any] | None:
    """The walk-forward evidence the promotion gate reads, in short."""
    if not walk_forward:
        return None
    confidence = walk_forward.get("confidence", {})
    return {
        "folds": len(walk_forward.get("folds", [])),
        "median_sharpe": walk_forward.get("median_sharpe"),
        "worst_drawdown": walk_forward.get("worst_drawdown"),
        "dsr": confidence.get("dsr"),
        "psr": confidence.get("psr"),
        "sharpe_low": confidence.get("sharpe_low"),
        "sharpe_high": confidence.get("sharpe_high"),
    }


def plot_bytes(engine: Engine, name: str, version: int) -> bytes | None:
    """The stored validation equity plot (PNG) of a version, or None when it has none."""
    import fsspec

    uri = (get_version(engine, name, version)["metrics"] or {}).get("validation_plot")
    if not uri:
        return None
    with fsspec.open(uri, "rb") as handle:
        return handle.read()


def render_page(models: list[dict[str, Any]], promote_dag_id: str = PROMOTE_DAG_ID) -> str:
    """The HTML page (every link relative, so it works under any base URL and proxy)."""
    return (
        templates()
        .get_template("models.html")
        .render(models=models, dag_id=promote_dag_id, shown=SHOWN_METRICS)
    )


def create_app(
    get_engine: Callable[[], Engine],
    guard: Callable[..., Any] | None = None,
    promote_dag_id: str = PROMOTE_DAG_ID,
) -> FastAPI:
    """The page (`/`), its data (`/api/models`) and the plots (`/plots/{name}/{version}.png`).

    `guard` is a FastAPI dependency run before every route (Airflow's auth check in the
    plugin); without one the app is open, which only tests and local tools should use.
    """
    app = page_app("cryptobots models", guard)

    registry = connected_engine(get_engine, "the model registry's database")

    def summaries(name: str | None) -> list[dict[str, Any]]:
        return model_summaries(registry(), name)

    @app.get("/", response_class=HTMLResponse)
    def page(name: str | None = None) -> str:
        return render_page(summaries(name), promote_dag_id)

    @app.get("/api/models")
    def models(name: str | None = None) -> list[dict[str, Any]]:
        return summaries(name)

    @app.get("/plots/{name}/{version}.png")
    def plot(name: str, version: int) -> Response:
        from pipeline.models.registry import VersionNotFound

        try:
            payload = plot_bytes(registry(), name, version)
        except VersionNotFound as error:
            raise HTTPException(404, str(error)) from None
        if payload is None:
            raise HTTPException(404, f"{name} v{version} has no validation plot")
        return Response(payload, media_type="image/png")

    return app
