"""The `training_runs` table: one row per trained agent, its lineage and its results.

A run is recorded when training starts (status `running`), updated when the agent
is trained (`trained`, with device, steps and artifacts) and when it has been
evaluated (`evaluated`, with validation metrics beside the baselines'), or marked
`failed` with the error. Re-running the same run id (an Airflow retry) resets it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.db.schema import training_runs
from pipeline.errors import CryptobotsError

STATUSES = ("running", "trained", "evaluated", "failed")


class RunNotFound(CryptobotsError):
    """No training run has the id asked for."""


def ms_to_datetime(ms: int) -> datetime:
    """Milliseconds since the epoch -> aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def ms_of(value: Any) -> int:
    """A datetime or ms value as ms since the epoch."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return int(moment.timestamp() * 1000)
    return int(value)


def start_run(engine: Engine, run_id: str, values: Mapping[str, Any]) -> None:
    """Record a run as running (replacing an earlier attempt of the same id)."""
    row = {
        **values,
        "id": run_id,
        "status": "running",
        "error": None,
        "finished_at": None,
        "started_at": datetime.now(UTC),
    }
    with engine.begin() as conn:
        conn.execute(sa.delete(training_runs).where(training_runs.c.id == run_id))
        conn.execute(sa.insert(training_runs).values(**row))


def update_run(engine: Engine, run_id: str, status: str, **values: Any) -> None:
    """Move a run to `status` and store `values`; finished states stamp finished_at."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {STATUSES}")
    if status in ("evaluated", "failed"):
        values.setdefault("finished_at", datetime.now(UTC))
    with engine.begin() as conn:
        updated = conn.execute(
            sa.update(training_runs)
            .where(training_runs.c.id == run_id)
            .values(status=status, **values)
        ).rowcount
    if not updated:
        raise RunNotFound(f"training run {run_id!r} does not exist")


def get_run(engine: Engine, run_id: str) -> dict[str, Any]:
    """One run as a dict; RunNotFound names the id."""
    with engine.connect() as conn:
        row = (
            conn.execute(sa.select(training_runs).where(training_runs.c.id == run_id))
            .mappings()
            .first()
        )
    if row is None:
        raise RunNotFound(
            f"training run {run_id!r} does not exist: list runs with "
            "SELECT id FROM training_runs, or train one with python -m pipeline train"
        )
    return dict(row)


def recent_runs(engine: Engine, limit: int = 20) -> list[dict[str, Any]]:
    """The latest runs, newest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(training_runs).order_by(training_runs.c.started_at.desc()).limit(limit)
        ).mappings()
        return [dict(row) for row in rows]
