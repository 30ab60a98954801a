"""The study's ingest step: fill each group's window from the recorded files through one
in-process exchange simulator per venue, ccxt, validation and storage
(`pipeline.data.backfill`). The simulator and the ingest machinery are imported by the
functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.arbitrage.study_config import Group, conversion_markets
from pipeline.arbitrage.study_stats import last_days
from pipeline.settings import Market
from pipeline.timeutil import iso

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from pipeline.settings import Settings


def recorded_window(data_dir: Path, group: Group, days: int) -> tuple[int, int] | None:
    """The last `days` of the legs' common range in the recorded files (None: a file is
    missing or they do not overlap)."""
    from pipeline.exchanges.simulator.recordings import read_recording

    firsts, ends = [], []
    for m in group.markets:
        stem = f"{m.exchange}_{m.symbol.replace('/', '-')}_{m.timeframe}.csv"
        path = next((p for p in (data_dir / stem, data_dir / f"{stem}.gz") if p.exists()), None)
        if path is None:
            return None
        recording = read_recording(path)
        firsts.append(int(recording.ts[0]))
        ends.append(int(recording.ts[-1]) + m.timeframe_ms)
    return last_days(max(firsts), min(ends), days, group.markets[0].timeframe_ms)


def ingest_recorded(
    settings: Settings,
    engine: Engine,
    groups: Sequence[Group],
    windows: Mapping[str, tuple[int, int] | None],
    progress: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Fill every group's window from the recorded files: one in-process simulator per venue
    (`settings.data_dir`), ccxt's binance client, validation and storage by
    `pipeline.data.backfill` (complete chunks are skipped). Conversion markets of mixed-quote
    groups come along when the venue has them. One summary per market."""
    from pipeline.data.backfill import backfill
    from pipeline.errors import ConfigurationError
    from pipeline.exchanges.client import ExchangeClient, RetryPolicy
    from pipeline.exchanges.factory import create_ccxt
    from pipeline.exchanges.simulator.app import SimulatorConfig, running
    from pipeline.settings import ExchangeConfig

    if settings.data_dir is None:
        raise ConfigurationError(
            "no recorded market data to ingest: set CRYPTOBOTS_DATA_DIR or pass --no-ingest"
        )
    jobs: dict[str, list[tuple[Market, int, int]]] = {}
    for group in groups:
        window = windows.get(group.slug)
        if window is None:
            continue
        for m in (*group.markets, *conversion_markets(group)):
            stem = f"{m.exchange}_{m.symbol.replace('/', '-')}_{m.timeframe}.csv"
            if any((settings.data_dir / name).exists() for name in (stem, f"{stem}.gz")):
                jobs.setdefault(m.exchange, []).append((m, *window))
    summaries = []
    for venue, markets in jobs.items():
        config = SimulatorConfig(data_dir=settings.data_dir, exchange=venue)
        with running(config) as simulator:
            client = create_ccxt(venue, ExchangeConfig(ccxt_id="binance", url=simulator.url))
            exchange = ExchangeClient(venue, client, RetryPolicy())
            exchange.load_markets()
            for market, start, end in dict.fromkeys(markets):
                done = backfill(
                    exchange,
                    engine,
                    market,
                    start,
                    end,
                    policy=settings.validation,
                    report_dir=settings.var_dir / "validations",
                )
                summary = done.as_dict()
                progress(
                    f"{market} {iso(start)}..{iso(end)}: {summary['inserted']:,} stored, "
                    f"{summary['quarantined']:,} quarantined, {summary['gaps']:,} missing at the "
                    f"exchange ({done.skipped} of {done.chunks} chunks already complete)"
                )
                summaries.append(summary)
    return summaries
