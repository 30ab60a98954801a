"""The market_data DAG's task, without Airflow: ingest one market's data interval.

Light at import (the DAG file imports it while parsing): the ingest machinery is
imported inside `ingest_market`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.settings import Market, Settings

if TYPE_CHECKING:
    from pipeline.exchanges.client import Credentials


def ingest_market(
    settings: Settings,
    market: str,
    start: int,
    end: int,
    *,
    credentials: Credentials | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Fetch, validate and store `market`'s closed candles in [start, end); a small summary."""
    from pipeline.db.engine import create_engine
    from pipeline.exchanges.client import open_exchange
    from pipeline.ingest import ingest

    target = Market.model_validate(market)
    exchange = open_exchange(settings, target.exchange, credentials)
    engine = create_engine(settings.db_url)
    try:
        summary = ingest(
            exchange,
            engine,
            target,
            start,
            end,
            policy=settings.validation,
            report_dir=settings.var_dir / "validations",
            run_id=run_id,
        )
    finally:
        engine.dispose()
    result = summary.as_dict()
    result["flagged"] = len(summary.flagged)
    return result


def exchanges_of(settings: Settings) -> dict[str, list[str]]:
    """Configured markets grouped by exchange (one mapped task and one pool each)."""
    grouped: dict[str, list[str]] = {}
    for market in settings.markets:
        grouped.setdefault(market.exchange, []).append(str(market))
    return grouped


def pool_name(exchange: str) -> str:
    """The Airflow pool that bounds concurrent requests to `exchange`."""
    return f"exchange_{exchange}"
