"""
# backfill_history

Fetch the configured markets' **history** in one go: one task per market fetches,
validates and stores `days` of candles ending at `end` (empty = the last closed
hour) in large chunks, skipping chunks already complete, so a second run fetches
only what is missing. Manual only: trigger it from the params form (or
`airflow dags trigger backfill_history --conf '{"days": 120}'`); `make run` does at
its first start.

Airflow's own backfill of `market_data` (UI, `airflow backfill create`) does the
same hour by hour, one DAG run per hour: right for re-running a few hours, slow for
months.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, Param, dag, task

from pipeline.settings import load_settings
from pipeline.tasks.market_data import exchanges_of, pool_name

OHLCV = Asset(name="ohlcv", uri="cryptobots://database/ohlcv")
SETTINGS = load_settings()


@dag(
    dag_id="backfill_history",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2},
    params={
        "days": Param(SETTINGS.airflow.history_days, type="integer", minimum=1),
        "end": Param(
            "", type="string", description="ISO time ending the history; empty = last closed hour"
        ),
    },
    tags=["cryptobots", "market-data"],
    doc_md=__doc__,
)
def backfill_history() -> None:
    @task(outlets=[OHLCV])
    def backfill(market: str, **context: object) -> dict:
        from cryptobots_hooks import ExchangeHook, final_refusals

        from pipeline.settings import Market
        from pipeline.tasks.market_data import backfill_market, history_range

        params: dict = context["params"]  # type: ignore[assignment]
        settings = load_settings()
        start, end = history_range(params["days"], params["end"] or None)
        with final_refusals():
            return backfill_market(
                settings,
                market,
                start,
                end,
                credentials=ExchangeHook(Market.model_validate(market).exchange).get_credentials(),
            )

    for exchange, markets in exchanges_of(SETTINGS).items():
        backfill.override(task_id=f"backfill_{exchange}", pool=pool_name(exchange)).expand(
            market=markets
        )


dag_object = backfill_history()
