"""Cross-exchange execution under one-sided faults: two simulated venues in this process
(binanceus and kraken, BTC/USDC), each holding USDC and BTC, traded through ccxt.

`--trades` times: a premium of 40-80 bps is planted on kraken's book, a leg fault on one
venue with probability `--fault-rate` (its next order rejected, filled to a fraction, or
held past the client's timeout), then the trade runs on the real execution path
(`serving.cross`): sized on both books and the inventory, both legs sent at once, what
one leg left exposed closed by the cheaper exit. Figures, each trade checked:

- exposure: every trade ends with less than a lot of base exposed, within
  `--unwind-seconds` of its legs being sent (floor: always, default 10 s);
- profit: the realized profit from the legs' fills after fees equals the change of the
  two venues' USDC balances (floor: to the cent, every trade);
- detection to both legs sent: from the books in hand to the second leg handed to its
  broker (sizing, planning, dispatch), p50 and p99 (floor: p99 <= 5 ms); beside it the
  same with the legs sent one after the other (the second after the first's answer), as
  the baseline, with the ratio.

    python -m bench.cross_execution [--trades N] [--trader-trades N] [--fault-rate F] [--seed S]
"""

from __future__ import annotations

import argparse
import random
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import sqlalchemy as sa

from bench.common import Floors
from pipeline.arbitrage.cross import CrossCosts, VenueQuote, opportunity
from pipeline.arguments import Parser, non_negative_float, positive_int
from pipeline.exchanges.client import ExchangeClient, RetryPolicy
from pipeline.exchanges.factory import Credentials, create_ccxt
from pipeline.exchanges.simulator.app import Running, SimulatorConfig, running
from pipeline.settings import ExchangeConfig, default_data_dir
from serving.cross.exposure import close_exposure, exposure, realized
from serving.cross.pair import Dispatcher, Sent, plan_legs, trade_id
from serving.kernel.broker import ExchangeBroker
from serving.kernel.market_rules import MarketRules

KEY, SECRET = "bench-key", "bench-secret"
SYMBOL, FEE, NOTIONAL = "BTC/USDC", 0.001, 500.0
FLOOR_DISPATCH_MS = 5.0
FAULTS = (
    {"kind": "reject"},
    {"kind": "partial", "fraction": 0.3},
    {"kind": "delay", "seconds": 3.5},
)


class Venue:
    """One simulated venue: its simulator, ccxt client, broker and market rules."""

    def __init__(self, name: str, sim: Running) -> None:
        self.name, self.sim = name, sim
        client = create_ccxt(
            name, ExchangeConfig(ccxt_id="binance", url=sim.url), Credentials(KEY, SECRET),
            timeout_ms=2000,
        )  # fmt: skip
        retry = RetryPolicy(attempts=8, initial_seconds=0.05, max_seconds=0.3, total_seconds=5)
        self.exchange = ExchangeClient(name, client, retry)
        self.exchange.load_markets()
        self.broker = ExchangeBroker(self.exchange)
        self.rules = MarketRules.from_ccxt(self.exchange.market(SYMBOL))

    def book(self) -> dict[str, Any]:
        return self.exchange.client.fetch_order_book(SYMBOL, 20)

    def usdc(self) -> float:
        return self.sim.exchange.accounts.account(KEY).balances.get("USDC", 0.0)

    def control(self, path: str, body: dict[str, Any]) -> None:
        answer = httpx.post(f"{self.sim.url}/sim/{path}", json={"symbol": "BTCUSDC", **body})
        answer.raise_for_status()

    def clear(self, path: str) -> None:
        httpx.delete(f"{self.sim.url}/sim/{path}").raise_for_status()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = Parser(prog="python -m bench.cross_execution", description=__doc__)
    parser.add_argument("--trades", type=positive_int, default=200)
    parser.add_argument("--baseline-trades", type=positive_int, default=50)
    parser.add_argument("--fault-rate", type=non_negative_float, default=0.1)
    parser.add_argument("--unwind-seconds", type=non_negative_float, default=10.0)
    parser.add_argument(
        "--trader-trades", type=int, default=200, help="through the cross trader (0: skip)"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--data-dir", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    floors = Floors()
    measure(parse(argv), floors)
    floors.exit()


def measure(args: argparse.Namespace, floors: Floors) -> dict[str, Any]:
    """Run the trades (then the sequential baseline), print the figures and verdicts."""
    data_dir = args.data_dir or default_data_dir()
    inventory = (("USDC", 1_000_000.0), ("BTC", 50.0))
    rng = random.Random(args.seed)
    with ExitStack() as stack:
        venues = [
            Venue(name, stack.enter_context(running(SimulatorConfig(
                data_dir=data_dir, exchange=name, shift_to_now=True,
                api_keys=((KEY, SECRET),), initial_balances=inventory,
            ))))
            for name in ("binanceus", "kraken")
        ]  # fmt: skip
        dispatcher = Dispatcher({v.name: v.broker for v in venues})
        stack.callback(dispatcher.close)
        trades = [one_trade(venues, dispatcher, rng, args, True) for _ in range(args.trades)]
        baseline = [
            one_trade(venues, dispatcher, rng, args, False) for _ in range(args.baseline_trades)
        ]
        figures = report(trades, baseline, args, floors)
        if args.trader_trades:
            daemon = trader_trades(venues, rng, args, data_dir)
            figures["trader"] = report_trader(daemon, args, floors)
    return figures


def trader_trades(
    venues: list[Venue], rng: random.Random, args: Any, data_dir: Path
) -> list[dict[str, Any]]:
    """The same planted premiums and faults traded by the cross trader itself (what
    `python -m serving --strategy cross --live` runs), one step each, its trades and
    legs written to a scratch Postgres database before they are sent."""
    from bench.common import scratch_database
    from pipeline.settings import load_settings
    from serving.cross.trader import CrossTrader

    settings = load_settings(
        data_dir=data_dir,
        exchanges={v.name: {"ccxt_id": "binance", "url": v.sim.url} for v in venues},
        markets=[f"{venues[0].name}:{SYMBOL}:1h"],
        arbitrage={
            "cross_markets": [f"{v.name}:{SYMBOL}:1m" for v in venues],
            "taker_fee_bps": FEE * 10_000,
            "max_cycle_notional": NOTIONAL,
            "max_cycles_per_hour": 10**6,
            "breaker_leg_failures": 10**6,
            "daily_loss_limit": 10**9,
            "unwind_seconds": args.unwind_seconds,
        },
    )
    steps = []
    with scratch_database("bench_cross") as engine:
        trader = CrossTrader(
            settings, engine, {v.name: v.exchange for v in venues},
            {v.name: v.broker for v in venues},
        )  # fmt: skip
        trader.start()
        for _ in range(args.trader_trades):
            venues[1].control("plant", {"bps": rng.uniform(40, 80), "seconds": 60.0})
            faulted = rng.random() < args.fault_rate
            if faulted:
                rng.choice(venues).control("leg-fault", dict(rng.choice(FAULTS)))
            before = sum(v.usdc() for v in venues)
            outcome = trader.step()
            steps.append(
                {"outcome": outcome, "faulted": faulted,
                 "usdc_change": sum(v.usdc() for v in venues) - before}
            )  # fmt: skip
            for venue in venues:
                venue.clear("plant")
                venue.clear("leg-fault")
        trader.dispatcher.close()
        with engine.connect() as conn:
            recorded = conn.execute(
                sa.text(
                    "SELECT status, realized_profit, latency_ms, exposure_seconds "
                    "FROM arb_opportunities ORDER BY created_at, detected_ms"
                )
            ).all()
    traded = [step for step in steps if step["outcome"] in ("done", "unwound", "unwinding")]
    for step, row in zip(traded, recorded, strict=True):
        step.update(row._mapping)
    return traded


def report_trader(trades: list[dict[str, Any]], args: Any, floors: Floors) -> dict[str, Any]:
    """The cross trader's figures and the floors' verdicts."""
    latency = np.array([t["latency_ms"] for t in trades])
    left_open = sum(t["status"] not in ("done", "unwound") for t in trades)
    worst = max(t["exposure_seconds"] or 0.0 for t in trades)
    gap = max(abs((t["realized_profit"] or 0.0) - t["usdc_change"]) for t in trades)
    figures = {
        "trades": len(trades),
        "faulted": sum(t["faulted"] for t in trades),
        "unwound": sum(t["status"] == "unwound" for t in trades),
        "left_open": left_open,
        "worst_exposure_seconds": worst,
        "profit_gap": gap,
        "latency_p50_ms": float(np.percentile(latency, 50)),
        "latency_p99_ms": float(np.percentile(latency, 99)),
    }
    in_time = floors.check("trader: in time", left_open == 0 and worst <= args.unwind_seconds)
    print(f"cross trader (serving.cross.trader, trades and legs written to Postgres first): "
          f"{len(trades)} trades, {figures['faulted']} with a one-sided fault, "
          f"{figures['unwound']} unwound")  # fmt: skip
    print(f"  exposure closed: {len(trades) - left_open}/{len(trades)}, slowest {worst:.2f} s "
          f"(floor <= {args.unwind_seconds:g} s) {in_time}")  # fmt: skip
    print(f"  recorded profit vs the venues' USDC: largest gap {gap:.6f} USDC (floor <= 0.01) "
          f"{floors.check('trader: profit to the cent', gap <= 0.01)}")  # fmt: skip
    fast = figures["latency_p99_ms"] <= FLOOR_DISPATCH_MS
    print(f"  books seen to both legs handed over: p50 {figures['latency_p50_ms']:.2f} ms, "
          f"p99 {figures['latency_p99_ms']:.2f} ms (floor <= {FLOOR_DISPATCH_MS:g}) "
          f"{floors.check('trader: detection p99', fast)}")  # fmt: skip
    return figures


def one_trade(
    venues: list[Venue], dispatcher: Dispatcher, rng: random.Random, args: Any, together: bool
) -> dict[str, Any]:
    """Plant a premium (and maybe a fault), trade it, and say what happened."""
    buy, sell = venues
    sell.control("plant", {"bps": rng.uniform(40, 80), "seconds": 60.0})
    faulted = None
    if together and rng.random() < args.fault_rate:
        faulted = rng.choice(venues).name, dict(rng.choice(FAULTS))
        next(v for v in venues if v.name == faulted[0]).control("leg-fault", faulted[1])
    before = sum(v.usdc() for v in venues)
    asks, bids = buy.book(), sell.book()
    detected = time.perf_counter()
    quotes = (VenueQuote(buy.name, SYMBOL, asks["bids"][0][0], asks["asks"][0][0]),
              VenueQuote(sell.name, SYMBOL, bids["bids"][0][0], bids["asks"][0][0]))  # fmt: skip
    seen = opportunity(CrossCosts(FEE, NOTIONAL, {}, {"USDC": 1.0}), *quotes)
    key = trade_id("bench", seen, int(time.time() * 1e6))
    rules = {v.name: v.rules for v in venues}
    legs = plan_legs(key, seen, rules, FEE, (1e6, 50.0), (asks["asks"], bids["bids"]))
    now = int(time.time() * 1000)
    if together:
        sent = list(dispatcher.send_both(legs, now))
    else:
        sent = [dispatcher.send(legs[0], now)]
        sent.append(dispatcher.send(legs[1], now))
    dispatch_ms = (max(s.handed_at for s in sent) - detected) * 1000

    def books() -> dict[str, tuple[float, float]]:
        return {v.name: (v.book()["bids"][0][0], v.book()["asks"][0][0]) for v in venues}

    closing = close_exposure(
        dispatcher, key, sent, books, rules, FEE, args.unwind_seconds,
        lambda: int(time.time() * 1000),
    )  # fmt: skip
    orders: list[Sent] = closing.legs + closing.exits
    return {
        "dispatch_ms": dispatch_ms,
        "closed": closing.closed,
        # from the legs handed over to the last exit's answer: the longest any exposure
        # can have been open (a leg that timed out counts its client timeout)
        "seconds": time.perf_counter() - min(s.handed_at for s in sent),
        "exposure": exposure(orders),
        "profit": realized(orders),
        "usdc_change": sum(v.usdc() for v in venues) - before,
        "faulted": faulted,
        "exits": len(closing.exits),
    }


def report(
    trades: list[dict[str, Any]], baseline: list[dict[str, Any]], args: Any, floors: Floors
) -> dict[str, Any]:
    """Print the figures and the floors' verdicts; the figures."""
    together = np.array([t["dispatch_ms"] for t in trades])
    apart = np.array([t["dispatch_ms"] for t in baseline])
    worst_seconds = max(t["seconds"] for t in trades)
    open_left = sum(not t["closed"] for t in trades)
    profit_gap = max(abs(t["profit"] - t["usdc_change"]) for t in trades)
    figures = {
        "trades": len(trades),
        "faulted": sum(t["faulted"] is not None for t in trades),
        "exits": sum(t["exits"] for t in trades),
        "left_open": open_left,
        "worst_close_seconds": worst_seconds,
        "profit_gap": profit_gap,
        "profit": sum(t["profit"] for t in trades),
        "dispatch_p50_ms": float(np.percentile(together, 50)),
        "dispatch_p99_ms": float(np.percentile(together, 99)),
        "baseline_p50_ms": float(np.percentile(apart, 50)),
        "baseline_p99_ms": float(np.percentile(apart, 99)),
    }
    ratio = figures["baseline_p99_ms"] / max(figures["dispatch_p99_ms"], 1e-9)
    seconds_ok = open_left == 0 and worst_seconds <= args.unwind_seconds
    print(f"cross execution: {len(trades)} trades, {figures['faulted']} with a one-sided "
          f"fault, {figures['exits']} exits, realized {figures['profit']:.2f} USDC")  # fmt: skip
    print(f"  exposure closed: {len(trades) - open_left}/{len(trades)}, slowest "
          f"{worst_seconds:.2f} s (floor <= {args.unwind_seconds:g} s) "
          f"{floors.check('exposure closed in time', seconds_ok)}")  # fmt: skip
    print(f"  realized profit vs the venues' USDC: largest gap {profit_gap:.6f} USDC (floor "
          f"<= 0.01) {floors.check('profit to the cent', profit_gap <= 0.01)}")  # fmt: skip
    fast = figures["dispatch_p99_ms"] <= FLOOR_DISPATCH_MS
    print(f"  detection to both legs sent: p50 {figures['dispatch_p50_ms']:.2f} ms, p99 "
          f"{figures['dispatch_p99_ms']:.2f} ms (floor <= {FLOOR_DISPATCH_MS:g}) "
          f"{floors.check('dispatch p99', fast)}")  # fmt: skip
    print(f"  baseline, legs one after the other: p50 {figures['baseline_p50_ms']:.2f} ms, "
          f"p99 {figures['baseline_p99_ms']:.2f} ms; ratio {ratio:.1f}x")  # fmt: skip
    return figures


if __name__ == "__main__":
    main()
