"""Backfill a market over a long range without Airflow: chunked, resumable, with progress.

The range is cut into chunks of `CHUNK_PAGES` exchange pages (a validation run costs
about the same whatever its size, so chunks are large); each chunk is one
`ingest` (one validation run, one transaction). A chunk whose every candle slot
is already accounted for (stored, quarantined or a recorded gap) is skipped, so
a second run after an interruption fetches only what is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.data.ingest import IngestSummary, fetch_interval, store_interval
from pipeline.db.schema import ohlcv, ohlcv_gaps, ohlcv_quarantine
from pipeline.exchanges.client import ExchangeClient
from pipeline.settings import Market, ValidationSettings

CHUNK_PAGES = 50
LOOKAHEAD = 3  # chunks fetched ahead of the one being stored (bounds memory)
ROW_FATES = ("inserted", "updated", "unchanged", "quarantined", "gaps")


@dataclass
class BackfillSummary:
    """Totals over the chunks of one backfill."""

    market: str
    chunks: int = 0
    skipped: int = 0
    summaries: list[IngestSummary] = field(default_factory=list)

    def total(self, name: str) -> int:
        return sum(getattr(s, name) for s in self.summaries)

    def as_dict(self) -> dict[str, int | str]:
        """JSON-able totals: market, chunks (skipped ones complete already), rows by fate."""
        return {
            "market": self.market,
            "chunks": self.chunks,
            "skipped": self.skipped,
            **{name: self.total(name) for name in ROW_FATES},
        }

    def line(self) -> str:
        """The totals for people, one line."""
        return (
            f"{self.market}: {self.chunks} chunks ({self.skipped} already complete), "
            f"{self.total('inserted')} inserted, {self.total('updated')} updated, "
            f"{self.total('unchanged')} unchanged, {self.total('quarantined')} quarantined, "
            f"{self.total('gaps')} missing at the exchange"
        )


def chunks(start: int, end: int, size: int) -> Iterator[tuple[int, int]]:
    """[start, end) cut into consecutive [a, b) of at most `size` ms."""
    while start < end:
        yield start, min(end, start + size)
        start += size


def accounted(engine: Engine, market: Market, start: int, end: int) -> int:
    """Candle slots of [start, end) that are stored, quarantined or in a recorded gap."""
    key = lambda table: sa.and_(  # noqa: E731
        table.c.exchange == market.exchange,
        table.c.symbol == market.symbol,
        table.c.timeframe == market.timeframe,
    )
    stored = sa.select(ohlcv.c.ts).where(key(ohlcv), ohlcv.c.ts >= start, ohlcv.c.ts < end)
    bad = sa.select(ohlcv_quarantine.c.ts).where(
        key(ohlcv_quarantine), ohlcv_quarantine.c.ts >= start, ohlcv_quarantine.c.ts < end
    )
    slots = sa.union(stored, bad).subquery()
    gap = sa.select(sa.func.coalesce(sa.func.sum(ohlcv_gaps.c.missing), 0)).where(
        key(ohlcv_gaps), ohlcv_gaps.c.start_ts >= start, ohlcv_gaps.c.start_ts < end
    )
    with engine.connect() as conn:
        present = conn.execute(sa.select(sa.func.count()).select_from(slots)).scalar_one()
        return int(present) + int(conn.execute(gap).scalar_one())


def backfill(
    exchange: ExchangeClient,
    engine: Engine,
    market: Market,
    start: int,
    end: int,
    *,
    policy: ValidationSettings | None = None,
    report_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
    chunk_candles: int | None = None,
) -> BackfillSummary:
    """Ingest [start, end) chunk by chunk, skipping complete chunks; `progress(candles)`.

    Chunks hold `chunk_candles` candle slots (default: CHUNK_PAGES exchange pages) and
    start at `start`, so the same command cuts the same chunks every time.
    """
    return backfill_many(
        exchange,
        engine,
        [(market, start, end)],
        policy=policy,
        report_dir=report_dir,
        progress=progress,
        chunk_candles=chunk_candles,
    )[0]


def backfill_many(
    exchange: ExchangeClient,
    engine: Engine,
    ranges: list[tuple[Market, int, int]],
    *,
    policy: ValidationSettings | None = None,
    report_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
    chunk_candles: int | None = None,
) -> list[BackfillSummary]:
    """Backfill several markets of one exchange; fetching runs ahead of storing.

    The exchange's request budget is the bottleneck, so the next chunks are fetched (in
    a second thread, the only one using the client; at most LOOKAHEAD ahead) while this
    one is validated and stored. The exchange's clock is read once, before the first
    fetch: which candles are closed is decided by it for every chunk.
    """
    summaries = {str(market): BackfillSummary(str(market)) for market, _, _ in ranges}
    jobs: list[tuple[Market, int, int, int]] = []
    for market, start, end in ranges:
        tf = market.timeframe_ms
        size = (chunk_candles or exchange.ohlcv_page_limit() * CHUNK_PAGES) * tf
        for a, b in chunks(start, end, size):
            slots = len(range(-(-a // tf) * tf, b, tf))
            summary = summaries[str(market)]
            summary.chunks += 1
            if accounted(engine, market, a, b) >= slots:
                summary.skipped += 1
                if progress:
                    progress(slots)
            else:
                jobs.append((market, a, b, slots))
    now = exchange.server_time() if jobs else 0  # once: every request counts on the limit
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fetch") as fetcher:
        pending = [
            fetcher.submit(fetch_interval, exchange, m, a, b, now)
            for m, a, b, _ in jobs[:LOOKAHEAD]
        ]
        for i, (market, _, _, slots) in enumerate(jobs):
            fetched = pending[i].result()
            if i + LOOKAHEAD < len(jobs):
                m, a, b, _ = jobs[i + LOOKAHEAD]
                pending.append(fetcher.submit(fetch_interval, exchange, m, a, b, now))
            summaries[str(market)].summaries.append(
                store_interval(engine, fetched, policy=policy, report_dir=report_dir)
            )
            if progress:
                progress(slots)
    return list(summaries.values())
