"""Ingest the closed candles of one market for one interval [start, end).

`ingest` pages through the exchange's `fetch_ohlcv` from `start` with its page
limit, keeps only candles that have closed on the exchange's clock, drops exact
repeats, validates, re-requests missing candles once, and then, in one database
transaction, quarantines bad rows, upserts good ones and records the exchange's
real gaps. Re-running an interval changes nothing.

Paging overlaps by one candle (each page starts at the previous page's last open
time), so every version of a candle the exchange repeats at a page boundary is
seen whatever the page size; rows outside [start, end) belong to other intervals
and are left to them.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipeline.data.validate import Validated, validate_candles
from pipeline.db.schema import ohlcv_gaps, ohlcv_quarantine
from pipeline.db.upsert import upsert_ohlcv
from pipeline.errors import DataValidationError
from pipeline.exchanges.client import ExchangeClient
from pipeline.settings import Market, ValidationSettings


@dataclass(frozen=True)
class IngestSummary:
    """What one ingest did."""

    market: str
    start: int
    end: int  # exclusive; earlier than asked when the interval has not closed yet
    fetched: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    quarantined: int = 0
    repeats: int = 0  # identical copies of a candle received more than once
    gaps: int = 0  # candles the exchange confirmed absent
    flagged: list[int] = field(default_factory=list)  # extreme but possible candles, stored
    report: str | None = None  # path of the validation result JSON
    retries: int = 0
    seconds_validating: float = 0.0
    seconds_storing: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Fetched:
    """What the exchange said about one market and interval, before validation."""

    market: Market
    start: int
    end: int  # exclusive; earlier than asked when the interval has not closed yet
    rows: list[list]
    gaps: list[tuple[int, int]]  # runs [a, b) still absent after one re-request
    retries: int = 0


def ingest(
    exchange: ExchangeClient,
    engine: Engine,
    market: Market,
    start: int,
    end: int,
    *,
    policy: ValidationSettings | None = None,
    report_dir: Path | None = None,
    run_id: str | None = None,
) -> IngestSummary:
    """Fetch, validate and store the closed candles of `market` in [start, end) (ms)."""
    fetched = fetch_interval(exchange, market, start, end)
    return store_interval(engine, fetched, policy=policy, report_dir=report_dir, run_id=run_id)


def fetch_interval(
    exchange: ExchangeClient, market: Market, start: int, end: int, now: int | None = None
) -> Fetched:
    """The closed candles of [start, end), missing ones re-requested once, gaps named.
    Closed by the exchange's clock: `now` when the caller read it already (a candle that
    closed since is left for the next run), else read here."""
    exchange.market(market.symbol)
    tf = market.timeframe_ms
    closed_end = min(end, (exchange.server_time() if now is None else now) // tf * tf)
    if closed_end <= start:
        return Fetched(market, start, max(start, closed_end), [], [])
    retries_before = exchange.retries
    rows = fetch_candles(exchange, market, start, closed_end)
    rows += fetch_missing(exchange, market, missing_runs(rows, start, closed_end, tf), closed_end)
    gaps = missing_runs(rows, start, closed_end, tf)
    return Fetched(market, start, closed_end, rows, gaps, exchange.retries - retries_before)


def store_interval(
    engine: Engine,
    fetched: Fetched,
    *,
    policy: ValidationSettings | None = None,
    report_dir: Path | None = None,
    run_id: str | None = None,
) -> IngestSummary:
    """Validate `fetched`, then in one transaction quarantine, upsert and record gaps."""
    policy = policy or ValidationSettings()
    market, start, end, gaps = fetched.market, fetched.start, fetched.end, fetched.gaps
    if end <= start:
        return IngestSummary(str(market), start, end)
    began = time.perf_counter()
    validated = validate_candles(fetched.rows, market, start, end, policy)
    report = _save_report(validated, market, start, end, report_dir)
    validating = time.perf_counter() - began
    with engine.begin() as conn:
        quarantine(conn, market, validated, run_id)
        bad_share = validated.failed / max(1, validated.received)
        if bad_share > policy.max_bad_fraction:
            failure = DataValidationError(
                f"{market} [{start}, {end}): {validated.failed} of "
                f"{validated.received} candles failed validation ({bad_share:.1%} > "
                f"max_bad_fraction {policy.max_bad_fraction:.1%}); they are in ohlcv_quarantine, "
                f"nothing was stored; first reasons: {validated.first_reasons()}; report: {report}"
            )
        else:
            failure = None
            result = upsert_ohlcv(conn, validated.good)
            record_gaps(conn, market, start, end, gaps)
    if failure is not None:
        raise failure
    return IngestSummary(
        market=str(market),
        start=start,
        end=end,
        fetched=len(fetched.rows),
        inserted=result.inserted,
        updated=result.updated,
        unchanged=result.unchanged,
        quarantined=len(validated.quarantined),
        repeats=validated.repeats,
        gaps=sum((b - a) // market.timeframe_ms for a, b in gaps),
        flagged=validated.flagged,
        report=str(report) if report else None,
        retries=fetched.retries,
        seconds_validating=validating,
        seconds_storing=time.perf_counter() - began - validating,
    )


def fetch_candles(
    exchange: ExchangeClient, market: Market, start: int, end: int, *, once: bool = False
) -> list[list]:
    """Every candle the exchange returns with open time in [start, end), in received order.

    With `once`, this is the re-request of a missing run: one pass, no overlap logic.
    """
    tf = market.timeframe_ms
    limit = exchange.ohlcv_page_limit()
    if once:
        limit = max(1, min(limit, (end - start) // tf + 1))
    rows: list[list] = []
    since = start
    while since < end:
        page = exchange.fetch_ohlcv(market.symbol, market.timeframe, since, limit)
        rows += [row for row in page if start <= row[0] < end]
        later = [row[0] for row in page if row[0] > since]
        if once or not later:
            break
        since = max(later)
        if since >= end - tf:
            break
    return rows


def fetch_missing(
    exchange: ExchangeClient, market: Market, runs: list[tuple[int, int]], end: int
) -> list[list]:
    """The candles of the missing `runs`, asked for once more: one page from the first
    run, covering every later run that starts inside it, then from the next run past it.
    On a market with many minutes without a trade (Kraken's candles skip them) that is a
    request a page, not one a run."""
    tf = market.timeframe_ms
    page = exchange.ohlcv_page_limit() * tf
    wanted = {ts for a, b in runs for ts in range(a, b, tf)}
    rows: list[list] = []
    asked_until = None
    for run_start, _ in runs:
        if asked_until is not None and run_start < asked_until:
            continue
        asked_until = min(end, run_start + page)
        found = fetch_candles(exchange, market, run_start, asked_until, once=True)
        rows += [row for row in found if row[0] in wanted]
    return rows


def missing_runs(rows: list[list], start: int, end: int, tf: int) -> list[tuple[int, int]]:
    """Contiguous runs [a, b) of the timeframe grid in [start, end) with no row at all."""
    first = -(-start // tf) * tf
    grid = np.arange(first, end, tf, dtype=np.int64)
    present = np.isin(grid, np.fromiter((row[0] for row in rows), dtype=np.int64))
    absent = grid[~present]
    if len(absent) == 0:
        return []
    breaks = np.flatnonzero(np.diff(absent) != tf)
    starts = np.r_[absent[0], absent[breaks + 1]]
    ends = np.r_[absent[breaks], absent[-1]] + tf
    return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


def quarantine(conn: Connection, market: Market, validated: Validated, run_id: str | None) -> None:
    """Insert the quarantined rows; a row already quarantined for the same reason is kept once."""
    if validated.quarantined.empty:
        return
    records = []
    for row in validated.quarantined.to_dict("records"):
        raw = json.dumps(row["raw"], default=str)
        key = f"{market}|{raw}|{row['reason']}"
        records.append(
            {
                "exchange": market.exchange,
                "symbol": market.symbol,
                "timeframe": market.timeframe,
                "ts": _int_or_none(row.get("ts")),
                **{
                    name: _float_or_none(row.get(name))
                    for name in ("open", "high", "low", "close", "volume")
                },
                "raw": raw,
                "reason": row["reason"],
                "run_id": run_id,
                "fingerprint": hashlib.sha256(key.encode()).hexdigest(),
            }
        )
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    conn.execute(insert(ohlcv_quarantine).on_conflict_do_nothing(), records)


def record_gaps(
    conn: Connection, market: Market, start: int, end: int, gaps: list[tuple[int, int]]
) -> None:
    """Replace the market's gap records inside [start, end) with `gaps`."""
    where = sa.and_(
        ohlcv_gaps.c.exchange == market.exchange,
        ohlcv_gaps.c.symbol == market.symbol,
        ohlcv_gaps.c.timeframe == market.timeframe,
        ohlcv_gaps.c.start_ts >= start,
        ohlcv_gaps.c.start_ts < end,
    )
    conn.execute(ohlcv_gaps.delete().where(where))
    if gaps:
        tf = market.timeframe_ms
        conn.execute(
            ohlcv_gaps.insert(),
            [
                {
                    "exchange": market.exchange,
                    "symbol": market.symbol,
                    "timeframe": market.timeframe,
                    "start_ts": a,
                    "end_ts": b,
                    "missing": (b - a) // tf,
                }
                for a, b in gaps
            ],
        )


def _save_report(
    validated: Validated, market: Market, start: int, end: int, report_dir: Path | None
) -> Path | None:
    if report_dir is None:
        return None
    folder = report_dir / market.exchange / market.symbol.replace("/", "-") / market.timeframe
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{start}-{end}.json"
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(validated.report, indent=1, default=str))
    temporary.replace(path)
    return path


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None and np.isfinite(float(value)) else None
    except (TypeError, ValueError):
        return None


def _float_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None
