"""The market-data DAGs' tasks and `python -m pipeline backfill`: ingest one market's
data interval (`market_data`), or its history in chunks (`backfill_history`, the CLI).

Light at import (the DAG files import it while parsing): the ingest machinery is
imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipeline.settings import Market, Settings
from pipeline.timeutil import DAY_MS, HOUR_MS

if TYPE_CHECKING:
    from pipeline.exchanges.factory import Credentials


def _with_exchange(
    settings: Settings,
    market: str,
    credentials: Credentials | None,
    work: Callable[..., Any],
) -> Any:
    """`work(exchange, engine, market, policy=..., report_dir=...)` on a fresh client and
    engine for `market`; the engine is disposed afterwards."""
    from pipeline.db.engine import create_engine
    from pipeline.exchanges.client import open_exchange

    target = Market.model_validate(market)
    exchange = open_exchange(settings, target.exchange, credentials)
    engine = create_engine(settings.db_url)
    try:
        return work(
            exchange,
            engine,
            target,
            policy=settings.validation,
            report_dir=settings.var_dir / "validations",
        )
    finally:
        engine.dispose()


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
    from pipeline.data.ingest import ingest

    summary = _with_exchange(
        settings,
        market,
        credentials,
        lambda exchange, engine, target, **options: ingest(
            exchange, engine, target, start, end, run_id=run_id, **options
        ),
    )
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


def backfill_market(
    settings: Settings,
    market: str,
    start: int,
    end: int,
    *,
    credentials: Credentials | None = None,
    progress: Callable[[int], object] | None = None,
) -> dict[str, Any]:
    """Fetch, validate and store `market`'s history in [start, end) chunk by chunk
    (`pipeline.data.backfill`: chunks already complete are skipped); the totals, the
    exchange's retries and a line for people."""
    from pipeline.data.backfill import backfill

    def work(exchange: Any, engine: Any, target: Market, **options: Any) -> dict[str, Any]:
        result = backfill(exchange, engine, target, start, end, progress=progress, **options)
        return {**result.as_dict(), "retries": exchange.retries, "line": result.line()}

    return _with_exchange(settings, market, credentials, work)


def history_range(days: int, end: str | None = None, now_ms: int | None = None) -> tuple[int, int]:
    """[start, end) in ms of `days` of history ending at the ISO time `end`, or at the
    start of the current hour (the last closed hourly candle's end)."""
    import time
    from datetime import UTC, datetime

    if end:
        moment = datetime.fromisoformat(end)
        stop = int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp() * 1000)
    else:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        stop = now // HOUR_MS * HOUR_MS
    return stop - days * DAY_MS, stop
