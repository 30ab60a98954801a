"""How the DAGs are scheduled and which Airflow `python -m pipeline run` starts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class AirflowSettings(BaseModel):
    """How the DAGs are scheduled."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start_date: datetime = Field(
        default=datetime(2015, 1, 1, tzinfo=UTC),
        description="earliest data interval the DAGs run (and backfill) for, UTC",
    )
    exchange_pool_slots: int = Field(
        default=4, ge=1, description="concurrent tasks per exchange (the exchange_<name> pool)"
    )
    history_days: int = Field(
        default=150,
        ge=1,
        description="days of history the backfill_history DAG fetches (make run: enough for "
        "the promotion window and the features' 30-day look-back)",
    )
    executor: Literal["local", "celery"] = Field(
        default="local",
        description="python -m pipeline run's Airflow: local (airflow standalone, one "
        "machine) or celery (scheduler, DAG processor, triggerer, API server and Celery "
        "workers as separate processes over metadata_db_url and broker_url)",
    )
    metadata_db_url: str = Field(
        default="",
        description="Airflow's own metadata database, never the cryptobots one (both keep an "
        "alembic_version table); empty: SQLite under var_dir/airflow, which only the local "
        "executor can use",
    )
    broker_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="the Celery executor's broker (Redis)"
    )
    worker_concurrency: int = Field(
        default=2, ge=1, description="task slots of the Celery worker on the default queue"
    )
    gpu_worker_concurrency: int = Field(
        default=1, ge=1, description="task slots of the Celery worker on the gpu queue"
    )

    @field_validator("start_date")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)
