"""Backfill every recorded binance series from one simulator with a 600/min weight budget.

Prints candles/s achieved, the ceiling the budget allows (1000 candles per klines
request at the permitted request rate: budget / klines weight requests a minute),
their ratio, the 429 and 418 answers, and the time spent validating and storing
per 100k candles. Side by side, the same backfill with ccxt's own throttle left at
its binance default (which assumes a larger budget). Floor (issue 3): the paced
run reaches >= 90% of the ceiling with no 418.

    python -m bench.backfill [--candles N]
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import Floors, scratch_database
from pipeline.arguments import Parser, positive_int
from pipeline.data.backfill import backfill_many
from pipeline.data.validate import _gx
from pipeline.exchanges.client import ExchangeClient, RetryPolicy
from pipeline.exchanges.factory import create_ccxt
from pipeline.exchanges.simulator.faults import WEIGHTS
from pipeline.exchanges.simulator.recordings import find_recordings
from pipeline.settings import ExchangeConfig, Market, load_settings

BUDGET = 600
PAGE = 1000
FLOOR_SHARE = 0.9


@contextmanager
def simulator_process(data: Path, options: Sequence[str] | None = None) -> Iterator[str]:
    """`python -m pipeline simulator [options]` in its own process, as users run it
    (default options: the weight budget of this bench)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "pipeline",
        "simulator",
        "--data",
        str(data),
        "--port",
        str(port),
        *(["--weight-budget", str(BUDGET)] if options is None else options),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{url}/sim/stats", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def series(data: Path, candles: int | None = None) -> list[tuple[Market, int, int]]:
    """Every recorded binance series as (market, start, end), the first `candles`
    candles of each when given (all of it otherwise)."""
    ranges = []
    for r in find_recordings(data, "binance"):
        start, end = int(r.ts[0]), int(r.ts[-1]) + r.timeframe_ms
        if candles is not None:
            end = min(end, start + candles * r.timeframe_ms)
        ranges.append(
            (Market(exchange="binance", symbol=r.symbol, timeframe=r.timeframe), start, end)
        )
    return ranges


def one_run(label: str, paced: bool, data: Path, candles: int | None = None) -> dict[str, Any]:
    """Backfill `series(data, candles)` from a fresh simulator into a scratch database."""
    with scratch_database("cb_bench_backfill") as engine:
        ranges = series(data, candles)
        with simulator_process(data) as url:
            client = create_ccxt("binance", ExchangeConfig(url=url), timeout_ms=10_000)
            exchange = ExchangeClient("binance", client, RetryPolicy())
            exchange.load_markets()
            if not paced:
                exchange.set_budget(None)  # only ccxt's throttle, at its binance default
            start = time.perf_counter()
            results = backfill_many(exchange, engine, ranges)
            seconds = time.perf_counter() - start
            with urllib.request.urlopen(f"{url}/sim/stats") as response:
                answered = json.load(response)["answered"]
        parts = [s for result in results for s in result.summaries]
        fetched = sum(s.fetched for s in parts)
        return {
            "label": label,
            "markets": len(ranges),
            "fetched": fetched,
            "seconds": seconds,
            "rate": fetched / seconds,
            "429": answered.get("429", 0),
            "418": answered.get("418", 0),
            "validating_per_100k": 1e5 * sum(s.seconds_validating for s in parts) / fetched,
            "storing_per_100k": 1e5 * sum(s.seconds_storing for s in parts) / fetched,
        }


def measure(data: Path, candles: int | None = None) -> dict[str, Any]:
    """The paced run and the baseline: each run's figures, the ceiling, the paced share."""
    _gx()  # import Great Expectations once, before either run is timed
    ceiling = BUDGET / WEIGHTS["/api/v3/klines"] * PAGE / 60
    runs = [
        one_run("paced to the stated budget", True, data, candles),
        one_run("ccxt's default throttle (baseline)", False, data, candles),
    ]
    return {
        "ceiling": ceiling,
        "runs": runs,
        "share": runs[0]["rate"] / ceiling,
        "ratio_baseline": runs[0]["rate"] / runs[1]["rate"],
    }


def report(figures: dict[str, Any]) -> Floors:
    """Print each run against the ceiling and the floor's verdict."""
    ceiling = figures["ceiling"]
    print(
        f"bench/backfill.py: weight budget {BUDGET}/min, klines weight "
        f"{WEIGHTS['/api/v3/klines']}, ceiling {ceiling:,.0f} candles/s"
    )
    for run in figures["runs"]:
        print(
            f"  {run['label']:<36} {run['fetched']:>7,} candles ({run['markets']} series) in "
            f"{run['seconds']:6.1f} s = {run['rate']:7,.0f} candles/s, "
            f"{run['rate'] / ceiling:5.1%} of ceiling, 429: {run['429']}, 418: {run['418']}"
        )
        print(
            f"  {'':<36} per 100k candles: validation {run['validating_per_100k']:.2f} s, "
            f"upsert+quarantine {run['storing_per_100k']:.2f} s"
        )
    paced = figures["runs"][0]
    ok = figures["share"] >= FLOOR_SHARE and paced["418"] == 0
    floors = Floors()
    print(
        f"  paced / baseline: {figures['ratio_baseline']:.2f}x; floor: paced >= "
        f"{FLOOR_SHARE:.0%} of ceiling with no 418 -> {floors.check('paced backfill', ok)}"
    )
    return floors


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="python -m bench.backfill", description=__doc__)
    parser.add_argument(
        "--candles", type=positive_int, default=None, help="per series (default: all)"
    )
    args = parser.parse_args(argv)
    data = load_settings().data_dir
    if data is None:
        raise SystemExit("no ../shared/data: set CRYPTOBOTS_DATA_DIR")
    report(measure(data, args.candles)).exit()


if __name__ == "__main__":
    main()
