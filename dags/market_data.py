"""
# market_data

Ingestion of closed candles (hourly by default) for every configured market
(`CRYPTOBOTS_MARKETS`): one mapped task per market, grouped by exchange, each a
transaction on its data interval `[data_interval_start, data_interval_end)`:
fetch through ccxt, validate (Great Expectations; bad rows to
`ohlcv_quarantine`), upsert into `ohlcv`, record real gaps in `ohlcv_gaps`.
Re-running an interval changes nothing.

Backfill with Airflow's own backfill (UI, `airflow backfill create --dag-id
market_data --from-date ... --to-date ...`, or the REST API). Each exchange's
tasks share the pool `exchange_<name>`; credentials come from the Connection
`exchange_<name>`, never from this file. Markets whose timeframe is longer than
an hour are not ingested by this schedule; backfill them with
`python -m pipeline backfill`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, dag, task
from airflow.timetables.interval import CronDataIntervalTimetable

from pipeline.settings import load_settings
from pipeline.settings.schedules import schedule_doc
from pipeline.tasks.market_data import exchanges_of, pool_name

OHLCV = Asset(name="ohlcv", uri="cryptobots://database/ohlcv")
SETTINGS = load_settings()
SCHEDULE = SETTINGS.airflow.market_data_schedule
TIMEZONE = SETTINGS.airflow.market_data_schedule_timezone


@dag(
    dag_id="market_data",
    schedule=CronDataIntervalTimetable(SCHEDULE, timezone=TIMEZONE),
    start_date=pendulum.instance(SETTINGS.airflow.start_date),
    catchup=False,
    max_active_runs=4,
    default_args={
        "retries": 3,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
    },
    tags=["cryptobots", "market-data"],
    doc_md=__doc__ + schedule_doc(SCHEDULE, TIMEZONE, "airflow.market_data_schedule"),
)
def market_data() -> None:
    @task(outlets=[OHLCV])
    def ingest(market: str, **context: object) -> dict:
        from cryptobots_hooks import ExchangeHook, final_refusals

        from pipeline.settings import Market
        from pipeline.tasks.market_data import ingest_market

        settings = load_settings()
        exchange = Market.model_validate(market).exchange
        with final_refusals():
            return ingest_market(
                settings,
                market,
                int(context["data_interval_start"].timestamp() * 1000),  # type: ignore[attr-defined]
                int(context["data_interval_end"].timestamp() * 1000),  # type: ignore[attr-defined]
                credentials=ExchangeHook(exchange).get_credentials(),
                run_id=str(context["run_id"]),
            )

    for exchange, markets in exchanges_of(SETTINGS).items():
        ingest.override(task_id=f"ingest_{exchange}", pool=pool_name(exchange)).expand(
            market=markets
        )


dag_object = market_data()
