"""`backfill`: fetch, validate and store one market's history over a time range."""

from __future__ import annotations

import argparse
import os

from pipeline import arguments as arg
from pipeline.errors import ConfigurationError
from pipeline.settings import Settings
from pipeline.timeutil import iso


def add_backfill(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`backfill --market M --start T --end T`."""
    fill = commands.add_parser("backfill", help="fetch, validate and store a market's history")
    fill.add_argument(
        "--market", type=arg.market, required=True, help="exchange:BASE/QUOTE:timeframe"
    )
    fill.add_argument(
        "--start", type=arg.iso_time, required=True, help="ISO date or datetime (UTC), inclusive"
    )
    fill.add_argument(
        "--end", type=arg.iso_time, required=True, help="ISO date or datetime (UTC), exclusive"
    )
    fill.set_defaults(handler=_backfill)


def _backfill(settings: Settings, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pipeline.exchanges.factory import credentials_from_reference
    from pipeline.tasks.market_data import backfill_market

    market, start, end = args.market, args.start, args.end
    if end <= start:
        raise ConfigurationError(
            f"--end {iso(end)} is not after --start {iso(start)}: give an --end after --start"
        )
    exchange_config = settings.exchanges.get(market.exchange)
    if exchange_config is None:
        raise ConfigurationError(
            f"--market {market}: exchange {market.exchange!r} is not configured; "
            f"configured: {sorted(settings.exchanges)}"
        )
    credentials = credentials_from_reference(exchange_config.credentials, os.environ)
    total = len(range(start, end, market.timeframe_ms))
    with tqdm(total=total, unit="candle", desc=str(market)) as bar:
        result = backfill_market(
            settings, str(market), start, end, credentials=credentials, progress=bar.update
        )
    print(f"{result['line']}, {result['retries']} retries")
    return 0
