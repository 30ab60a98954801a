"""How the DAGs are scheduled and which Airflow `python -m pipeline run` starts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from pipeline.settings.schedules import check_cron, check_timezone, fires_off_the_hour


class AirflowSettings(BaseModel):
    """How the DAGs are scheduled."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start_date: datetime = Field(
        default=datetime(2015, 1, 1, tzinfo=UTC),
        description="earliest data interval the DAGs run (and backfill) for, UTC",
    )
    market_data_schedule_timezone: str = Field(
        default="UTC", description="IANA time zone of market_data_schedule, e.g. Europe/London"
    )
    market_data_schedule: str = Field(
        default="0 * * * *",
        validate_default=True,
        description="when the market_data DAG runs (each run ingests the closed candles of "
        "its data interval, the time since the previous run): a cron expression or a "
        "preset (@hourly, @daily), in market_data_schedule_timezone; it must fire on whole hours "
        "(candles close on the hour)",
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
    preload: bool = Field(
        default=True,
        description="import the tasks' modules (pandas, ccxt, Great Expectations, ...) once "
        "in the process that forks the tasks (LocalExecutor's scheduler, each Celery "
        "worker), so a task starts in seconds (pipeline.ops.preload); false: every task "
        "imports them itself",
    )

    @field_validator("start_date")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    @field_validator("market_data_schedule_timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        return check_timezone(value)

    @field_validator("market_data_schedule")
    @classmethod
    def _cron(cls, value: str, info: ValidationInfo) -> str:
        value = check_cron(value, "0 * * * *")
        timezone = info.data.get("market_data_schedule_timezone")
        off = fires_off_the_hour(value, timezone) if timezone else None
        if off is not None:
            raise ValueError(
                f"{value!r} in {timezone} fires at {off:%Y-%m-%d %H:%M} UTC, not on a whole "
                "hour: the candles close on the hour, so a run there would cut one in two; "
                "use minute 0 in a time zone whole hours from UTC, e.g. '0 * * * *' or "
                "'@daily' in UTC"
            )
        return value
