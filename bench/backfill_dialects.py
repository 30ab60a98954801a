"""Backfill the same recorded series through Binance's dialect and Kraken's, at the same
stated rate limit, each against its own ceiling (issue 30).

Both simulators serve every recorded binance series (the Kraken one under Kraken's pair
names) and state the same limit, `--rate` candle requests a second, each in its own
terms: Binance as a weight budget a calendar minute (rate x 60 x the klines weight),
which the pipeline reads from exchangeInfo and paces to; Kraken as its API counter
(burst 15, decaying `--rate` a second), which the pipeline is told as
`rate_limit_ms` = 1000 / rate. Each run's ceiling is the rate times the candles a
request answers: 1,000 on Binance, 720 on Kraken (sustained: a run shorter than a few
minutes can pass it on a minute's budget spent at once, or Kraken's burst of 15).
Kraken answers only its 720 most recent candles, so its run asks each series for the last
719 closed ones (the deepest it reaches), Binance's for `--candles` of each. Printed:
candles/s, the share of the ceiling, requests by kind, refusals. Floor: neither exchange
refuses a request (the pipeline keeps to the stated limit on both dialects).

    python -m bench.backfill_dialects [--rate R] [--candles N]
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.backfill import series, simulator_process
from bench.common import Floors, scratch_database
from pipeline.arguments import Parser, positive_float, positive_int
from pipeline.data.backfill import backfill_many
from pipeline.data.validate import _gx
from pipeline.exchanges.client import ExchangeClient, RetryPolicy
from pipeline.exchanges.factory import create_ccxt
from pipeline.exchanges.simulator.faults import WEIGHTS
from pipeline.settings import ExchangeConfig, Market, load_settings

PAGES = {"binance": 1000, "kraken": 720}
KRAKEN_BURST = 15


def kraken_series(data: Path, now_ms: int) -> list[tuple[Market, int, int]]:
    """Every recorded binance series' last 719 closed candles before `now_ms` (history
    shifted to end now): what Kraken's candle endpoint still answers."""
    ranges = []
    for market, _, _ in series(data):
        tf = market.timeframe_ms
        closed = now_ms // tf * tf
        ranges.append((market, closed - (PAGES["kraken"] - 1) * tf, closed))
    return ranges


def one_run(dialect: str, data: Path, rate: float, candles: int) -> dict[str, Any]:
    """Backfill through `dialect` at `rate` candle requests a second into a scratch database."""
    budget = round(rate * 60 * WEIGHTS["/api/v3/klines"])
    extra = ["--dialect", dialect, "--weight-budget", str(budget)]
    if dialect == "kraken":
        extra += ["--shift-to-now", "--kraken-counter", f"{KRAKEN_BURST}:{rate}"]
    with scratch_database(f"cb_bench_{dialect}") as engine, simulator_process(data, extra) as url:
        ccxt_id = "kraken" if dialect == "kraken" else "binance"
        pace = round(1000 / rate) if dialect == "kraken" else None  # Binance: its budget
        config = ExchangeConfig(ccxt_id=ccxt_id, url=url, rate_limit_ms=pace)
        exchange = ExchangeClient(ccxt_id, create_ccxt(ccxt_id, config), RetryPolicy())
        exchange.load_markets()
        if dialect == "kraken":
            ranges = kraken_series(data, exchange.server_time())
        else:
            ranges = series(data, candles)
        ranges = [(m.model_copy(update={"exchange": dialect}), a, b) for m, a, b in ranges]
        before = dict(exchange.requests)
        began = time.time()
        results = backfill_many(exchange, engine, ranges)
        ended = time.time()
        with urllib.request.urlopen(f"{url}/sim/stats") as response:
            stats = json.load(response)
    parts = [s for result in results for s in result.summaries]
    fetched = sum(s.fetched for s in parts)
    seconds = ended - began
    ceiling = rate * PAGES[dialect]
    requests = {k: v - before.get(k, 0) for k, v in exchange.requests.items()}
    return {
        "dialect": dialect,
        "markets": len(ranges),
        "fetched": fetched,
        "gaps": sum(s.gaps for s in parts),
        "seconds": seconds,
        "rate": fetched / seconds,
        "ceiling": ceiling,
        "share": fetched / seconds / ceiling,
        "requests": {k: v for k, v in requests.items() if v},
        "refused": stats["answered"].get("429", 0) + stats.get("kraken_refused", 0),
        "banned": stats["answered"].get("418", 0),
    }


def report(runs: list[dict[str, Any]], rate: float) -> Floors:
    """Print each run against its ceiling, side by side, and the floors' verdicts."""
    floors = Floors()
    print(f"bench/backfill_dialects.py: stated limit {rate:g} candle requests/s on both")
    for run in runs:
        ok = run["refused"] == 0 and run["banned"] == 0
        requests = ", ".join(f"{k} {v}" for k, v in sorted(run["requests"].items()))
        print(
            f"  {run['dialect']:<8} {run['fetched']:>7,} candles ({run['markets']} series, "
            f"{run['gaps']:,} missing at the exchange) in {run['seconds']:6.1f} s = "
            f"{run['rate']:7,.0f} candles/s, ceiling {run['ceiling']:,.0f}: "
            f"{run['share']:5.1%}"
        )
        print(
            f"  {'':<8} requests: {requests}; refused {run['refused']}, banned "
            f"{run['banned']} (floor: none) {floors.check(run['dialect'], ok)}"
        )
    kraken, binance = (next(r for r in runs if r["dialect"] == d) for d in ("kraken", "binance"))
    print(
        f"  kraken / binance: {kraken['rate'] / binance['rate']:.2f}x the candles/s, "
        f"{kraken['share'] / binance['share']:.2f}x the share of its ceiling"
    )
    return floors


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="python -m bench.backfill_dialects", description=__doc__)
    parser.add_argument("--rate", type=positive_float, default=0.5, help="requests a second")
    parser.add_argument(
        "--candles", type=positive_int, default=100_000, help="per series on Binance"
    )
    args = parser.parse_args(argv)
    data = load_settings().data_dir
    if data is None:
        raise SystemExit("no ../shared/data: set CRYPTOBOTS_DATA_DIR")
    _gx()  # import Great Expectations once, before either run is timed
    runs = [one_run(d, data, args.rate, args.candles) for d in ("binance", "kraken")]
    report(runs, args.rate).exit()


if __name__ == "__main__":
    main()
