"""Arbitrage detection on an exchange the size of Binance: numpy against plain Python loops.

A synthetic spot exchange of 2,000 markets over 500 currencies: 12 quote currencies
(USDT, BTC, ETH, BNB, ...) all traded against each other, every other currency listed
against USDT and, at random, a few more of them (weighted toward BTC, ETH and BNB, as on
Binance). Mid prices are each currency's value with random noise (`--noise-bps`, so that a
few cycles pay), spreads of 1-10 bps, books of 10 random levels, a 0.1% taker fee. Home is
USDT. Timed, per call, after a warm-up:

(a) one book update (a new ccxt order book for a random market, in a random walk) then
    the 3-cycles through home re-evaluated: only those through the updated market
    (`Triangles.on_update`, what the trader runs) and all of them (`Triangles.evaluate`),
    against the same written as a plain Python loop over the cycles (weights in a list).
(b) a full negative-cycle search up to 4 legs (`CycleSearch.run`, Bellman-Ford vectorized
    over the edge list) against a plain Python loop over every simple 3- and 4-cycle
    through home; and, for reference, the same Bellman-Ford written as Python loops.
(c) detection to first leg handed to the paper broker, on the real execution path: the
    arbitrage trader (`serving.arbitrage`) on paper against the exchange simulator in this
    process (binance BTC/USDT, ETH/USDT, ETH/BTC, consistent books, ETH/BTC planted 40 bps
    rich), writing to a scratch Postgres database: from the books in hand to the first
    leg's `execute` call (graph update, 3-cycles and the 4-leg search, sizing against
    depth, the gate, the opportunity and first leg written). Fetching the books and the
    legs' own fills are network and are excluded. Beside it, the same with the detection
    written as the plain Python loop over the cycles.

Both sides must find the same cycles (checked before timing is printed). Floors on this
CPU (arbitrage issue): (a) <= 100 microseconds, (b) <= 10 ms, (c) p99 <= 5 ms.

    python -m bench.arbitrage [--updates N] [--searches N] [--cycles N] [--seed S]
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bench.common import Floors
from pipeline.arbitrage import (
    ArbitrageConfig,
    CycleSearch,
    ExchangeGraph,
    MarketSpec,
    Triangles,
    size_cycle,
)
from pipeline.arguments import Parser, non_negative_float, non_negative_int, positive_int

FLOOR_UPDATE_US = 100.0
FLOOR_SEARCH_MS = 10.0
FLOOR_FIRST_LEG_MS = 5.0
FEE = 0.001
LEVELS = 10
HOME = "USDT"
# Quote currencies, their value in USDT and how often a listing is against them.
HUBS = {
    "USDT": (1.0, 0.0),
    "BTC": (60_000.0, 0.30),
    "ETH": (3_000.0, 0.15),
    "BNB": (600.0, 0.15),
    "FDUSD": (1.0, 0.10),
    "USDC": (1.0, 0.10),
    "TRY": (0.03, 0.08),
    "EUR": (1.08, 0.04),
    "BRL": (0.18, 0.03),
    "JPY": (0.0067, 0.02),
    "DAI": (1.0, 0.015),
    "TUSD": (1.0, 0.015),
}

Book = dict[str, list[list[float]]]


def synthetic_exchange(
    rng: np.random.Generator, currencies: int, markets: int
) -> tuple[list[MarketSpec], dict[str, float]]:
    """Markets (every hub pair, then each other currency vs USDT and random hubs) and the
    value of each currency in USDT."""
    hubs = list(HUBS)
    value = {name: v for name, (v, _) in HUBS.items()}
    specs = [MarketSpec(f"{b}/{q}", b, q, FEE) for i, q in enumerate(hubs) for b in hubs[i + 1 :]]
    coins = [f"C{i:03d}" for i in range(currencies - len(hubs))]
    value.update(
        zip(coins, np.exp(rng.uniform(math.log(1e-4), math.log(1e4), len(coins))), strict=True)
    )
    specs += [MarketSpec(f"{c}/{HOME}", c, HOME, FEE) for c in coins]
    weights = np.array([w for _, w in HUBS.values()])
    listed = {(s.base, s.quote) for s in specs}
    while len(specs) < markets:
        pair = (str(rng.choice(coins)), hubs[int(rng.choice(len(hubs), p=weights / weights.sum()))])
        if pair not in listed:
            listed.add(pair)
            specs.append(MarketSpec(f"{pair[0]}/{pair[1]}", pair[0], pair[1], FEE))
    return specs, value


def random_book(rng: np.random.Generator, mid: float) -> Book:
    """A ccxt order book of LEVELS levels a side around `mid`, spread 1-10 bps."""
    half = mid * rng.uniform(0.5e-4, 5e-4)
    steps = mid * np.cumsum(rng.uniform(0.0, 2e-4, LEVELS))
    amounts = rng.uniform(10.0, 1_000.0, (2, LEVELS)) / mid
    return {
        "bids": np.column_stack((mid - half - steps, amounts[0])).tolist(),
        "asks": np.column_stack((mid + half + steps, amounts[1])).tolist(),
    }


class PythonTriangles:
    """The 3-cycle search as a plain Python loop over the cycles, weights in a list."""

    def __init__(self, graph: ExchangeGraph, cycles: np.ndarray, max_weight: float) -> None:
        self.index = graph.market_index
        self.fee_weight = [-math.log1p(-m.taker_fee) for m in graph.markets]
        self.w = graph.weights.tolist()
        self.cycles = [tuple(c) for c in cycles.T.tolist()]
        self.max_weight = max_weight
        by_market: list[list[int]] = [[] for _ in graph.markets]
        for i, cycle in enumerate(self.cycles):
            for edge in cycle:
                by_market[edge // 2].append(i)
        self.by_market = by_market

    def update_book(self, symbol: str, book: Book) -> int:
        k = self.index[symbol]
        self.w[2 * k] = math.log(book["asks"][0][0]) + self.fee_weight[k]
        self.w[2 * k + 1] = -math.log(book["bids"][0][0]) + self.fee_weight[k]
        return k

    def evaluate(self) -> list[int]:
        w, found = self.w, []
        for i, (a, b, c) in enumerate(self.cycles):
            if w[a] + w[b] + w[c] < self.max_weight:
                found.append(i)
        return found

    def on_update(self, k: int) -> list[int]:
        w, found = self.w, []
        for i in self.by_market[k]:
            a, b, c = self.cycles[i]
            if w[a] + w[b] + w[c] < self.max_weight:
                found.append(i)
        return found


def simple_cycles(graph: ExchangeGraph, home: str, max_length: int) -> list[tuple[int, ...]]:
    """Every simple cycle of 3..max_length edges through home (depth-first, set up once)."""
    h, out, found = graph.index[home], graph.out, []

    def walk(node: int, edges: tuple[int, ...], seen: frozenset[int]) -> None:
        for nxt, edge in out[node].items():
            if nxt == h and len(edges) >= 2:
                found.append((*edges, edge))
            elif nxt != h and nxt not in seen and len(edges) + 1 < max_length:
                walk(nxt, (*edges, edge), seen | {nxt})

    walk(h, (), frozenset((h,)))
    return found


def python_cycle_search(
    w: Sequence[float], cycles: Sequence[tuple[int, ...]], max_weight: float
) -> dict[tuple[int, int], tuple[float, tuple[int, ...]]]:
    """Plain loop over every cycle: the best paying one per (length, last edge)."""
    best: dict[tuple[int, int], tuple[float, tuple[int, ...]]] = {}
    for cycle in cycles:
        weight = 0.0
        for edge in cycle:
            weight += w[edge]
        if weight < max_weight:
            key = (len(cycle), cycle[-1])
            if key not in best or weight < best[key][0]:
                best[key] = (weight, cycle)
    return best


def python_bellman_ford(
    src: Sequence[int], dst: Sequence[int], w: Sequence[float], n: int, home: int, length: int
) -> list[list[float]]:
    """The same relaxation as `CycleSearch`, one Python step per edge (reference only)."""
    dist = [math.inf] * n
    dist[home] = 0.0
    closed = []
    for _ in range(length):
        new, parent, back = [math.inf] * n, [-1] * n, [math.inf] * n
        for e in range(len(w)):
            d = dist[src[e]] + w[e]
            v = dst[e]
            if v == home:
                back[src[e]] = d
            elif d < new[v]:
                new[v], parent[v] = d, e
        closed.append(back)
        dist = new
    return closed


def per_call_us(run: Callable[[int], object], calls: int) -> np.ndarray:
    """Microseconds of each `run(i)` for i in range(calls), after a warm-up."""
    for i in range(min(calls // 10, 100)):
        run(i)
    out = np.empty(calls)
    for i in range(calls):
        start = time.perf_counter()
        run(i)
        out[i] = time.perf_counter() - start
    return out * 1e6


def edges_of(graph: ExchangeGraph, cycle: Any) -> tuple[int, ...]:
    """A found cycle's legs as edge indices of `graph`."""
    return tuple(2 * graph.market_index[leg.symbol] + (leg.side == "sell") for leg in cycle.legs)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; its defaults are Binance's size."""
    parser = Parser(prog="python -m bench.arbitrage", description=__doc__)
    parser.add_argument("--currencies", type=positive_int, default=500)
    parser.add_argument("--markets", type=positive_int, default=2000)
    parser.add_argument(
        "--updates", type=positive_int, default=20_000, help="book updates timed in (a)"
    )
    parser.add_argument(
        "--searches", type=positive_int, default=300, help="full searches timed in (b)"
    )
    parser.add_argument(
        "--noise-bps", type=non_negative_float, default=8.0, help="mid price noise (std)"
    )
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--cycles", type=positive_int, default=1000, help="cycles traded in (c)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    floors = Floors()
    measure(parse(argv), floors)
    floors.exit()


def measure(args: argparse.Namespace, floors: Floors) -> dict[str, Any]:
    """(a), (b) and (c) at the sizes of `args`, printed as they are measured, each floor
    judged by `floors`; the figures (microseconds in (a), milliseconds in (b) and (c))."""

    def verdict(value: float, floor: float) -> str:
        return floors.check(f"{value:.3g} (floor <= {floor:g})", value <= floor)

    rng = np.random.default_rng(args.seed)
    config = ArbitrageConfig(home=HOME, max_length=4)

    specs, value = synthetic_exchange(rng, args.currencies, args.markets)
    graph = ExchangeGraph(specs)
    noise = args.noise_bps * 1e-4
    mids = np.array([value[s.base] / value[s.quote] for s in specs])
    mids *= np.exp(rng.normal(0.0, noise, mids.size))
    books = {s.symbol: random_book(rng, mid) for s, mid in zip(specs, mids, strict=True)}
    for symbol, book in books.items():
        graph.update_book(symbol, book)
    events = book_events(rng, specs, mids, noise, args.updates)

    triangles = Triangles(graph, config)
    search = CycleSearch(graph, config)
    py_triangles = PythonTriangles(graph, triangles.edges, config.max_weight)
    cycles34 = simple_cycles(graph, HOME, 4)
    per_market = np.bincount(triangles.edges.ravel() // 2, minlength=len(specs))
    print(
        f"bench/arbitrage.py: {len(graph.currencies)} currencies, {len(specs)} markets "
        f"({2 * len(specs)} edges), {LEVELS}-level books, fee {FEE:.1%}, home {HOME}; "
        f"{len(triangles)} 3-cycles through home ({per_market.mean():.1f} per market on "
        f"average, at most {per_market.max()}), {len(cycles34) - len(triangles)} 4-cycles; "
        f"CPU with {os.cpu_count()} cores, numpy {np.__version__}"
    )

    # (a) one book update, then the 3-cycles through home.
    def numpy_incremental(i: int) -> np.ndarray:
        symbol, book = events[i]
        graph.update_book(symbol, book)
        return triangles.on_update(symbol)

    def numpy_full(i: int) -> np.ndarray:
        symbol, book = events[i]
        graph.update_book(symbol, book)
        return triangles.evaluate()

    def python_full(i: int) -> list[int]:
        symbol, book = events[i]
        py_triangles.update_book(symbol, book)
        return py_triangles.evaluate()

    def python_incremental(i: int) -> list[int]:
        symbol, book = events[i]
        return py_triangles.on_update(py_triangles.update_book(symbol, book))

    n = args.updates
    py_n = max(n // 10, 200)
    rows_a = {
        "numpy, cycles through the market": per_call_us(numpy_incremental, n),
        "numpy, every cycle": per_call_us(numpy_full, n),
        "python loop, cycles through the market": per_call_us(python_incremental, n),
        "python loop, every cycle": per_call_us(python_full, py_n),
    }
    # Replay the python side to the end so both hold the final books, then compare.
    for i in range(py_n, n):
        py_triangles.update_book(*events[i])
    incremental_values = triangles.values.copy()
    paying3 = triangles.evaluate()
    assert np.allclose(incremental_values, triangles.values, rtol=0, atol=1e-12)
    assert paying3.tolist() == py_triangles.evaluate()

    print(f"(a) book update + 3-cycles through {HOME} re-evaluated, per update:")
    print_update_timings(rows_a)
    inc = rows_a["numpy, cycles through the market"]
    full = rows_a["numpy, every cycle"]
    py_full = rows_a["python loop, every cycle"]
    py_inc = rows_a["python loop, cycles through the market"]
    print(
        f"  every cycle: numpy p50 {np.median(full):.1f} us (floor <= {FLOOR_UPDATE_US:.0f} us) "
        f"-> {verdict(float(np.median(full)), FLOOR_UPDATE_US)}, p99 {np.percentile(full, 99):.1f}"
        f" us; {np.median(py_full) / np.median(full):.0f}x faster than the python loop"
    )
    print(
        f"  through the market: numpy p50 {np.median(inc):.1f} us, p99 "
        f"{np.percentile(inc, 99):.1f} us (floor <= {FLOOR_UPDATE_US:.0f} us) -> "
        f"{verdict(float(np.percentile(inc, 99)), FLOOR_UPDATE_US)}; "
        f"{np.median(py_full) / np.median(inc):.0f}x faster than the python loop over every "
        f"cycle; the python loop over the same cycles takes p50 {np.median(py_inc):.1f} us "
        f"(numpy {np.median(py_inc) / np.median(inc):.2f}x its speed: few cycles a market)"
    )
    print(f"  {paying3.size} 3-cycles pay after fees at the final books (both sides agree)")

    # (b) full negative-cycle search up to 4 legs, at the final books.
    books.update(events)
    found = search.run()
    w = graph.weights.tolist()
    expected = python_cycle_search(w, cycles34, config.max_weight)
    got = {(len(c.legs), edges_of(graph, c)[-1]): c for c in found}
    assert got.keys() == expected.keys(), "the vectorized search and the loop disagree"
    for key, (weight, _) in expected.items():
        assert abs(got[key].weight - weight) < 1e-12
    src, dst = graph.src.tolist(), graph.dst.tolist()
    home = graph.index[HOME]
    rows_b = {
        "numpy Bellman-Ford (CycleSearch.run)": per_call_us(lambda _: search.run(), args.searches),
        "python loop over every 3- and 4-cycle": per_call_us(
            lambda _: python_cycle_search(w, cycles34, config.max_weight), 5
        ),
        "python Bellman-Ford (reference)": per_call_us(
            lambda _: python_bellman_ford(src, dst, w, len(graph.currencies), home, 4), 20
        ),
    }
    print(f"(b) full negative-cycle search up to 4 legs from {HOME}, per search:")
    print_search_timings(rows_b)
    bf = float(np.median(rows_b["numpy Bellman-Ford (CycleSearch.run)"])) / 1e3
    loop = float(np.median(rows_b["python loop over every 3- and 4-cycle"])) / 1e3
    py_bf = float(np.median(rows_b["python Bellman-Ford (reference)"])) / 1e3
    print(
        f"  numpy p50 {bf:.3f} ms (floor <= {FLOOR_SEARCH_MS:.0f} ms) -> "
        f"{verdict(bf, FLOOR_SEARCH_MS)}; {loop / bf:.0f}x faster than the python loop over "
        f"the cycles, {py_bf / bf:.0f}x faster than python Bellman-Ford"
    )
    lengths = [len(c.legs) for c in found]
    print(
        f"  {len(found)} cycles reported ({lengths.count(3)} of 3 legs, {lengths.count(4)} of "
        f"4), best {found[0].edge_bps if found else float('nan'):.1f} bps; both sides agree"
    )
    if found:
        print_sizing(found[0], books)
    leg = first_leg(args.cycles)
    if leg is not None:
        print(
            f"  p99 {leg['p99_ms']:.3f} ms (floor <= {FLOOR_FIRST_LEG_MS:.0f} ms) -> "
            f"{verdict(leg['p99_ms'], FLOOR_FIRST_LEG_MS)}"
        )
    return {
        "update_full_p50_us": float(np.median(full)),
        "update_full_vs_python": float(np.median(py_full) / np.median(full)),
        "update_market_p99_us": float(np.percentile(inc, 99)),
        "update_market_vs_python": float(np.median(py_full) / np.median(inc)),
        "search_p50_ms": bf,
        "search_vs_python": loop / bf,
        "search_vs_python_bellman_ford": py_bf / bf,
        "cycles_found": len(found),
        "first_leg": leg,
    }


def book_events(
    rng: np.random.Generator,
    specs: Sequence[MarketSpec],
    mids: np.ndarray,
    noise: float,
    updates: int,
) -> list[tuple[str, Book]]:
    """`updates` new books, each for a random market whose mid (in `mids`) walks on."""
    events: list[tuple[str, Book]] = []
    for k in rng.integers(0, len(specs), updates).tolist():
        mids[k] *= math.exp(rng.normal(0.0, noise / 10))
        events.append((specs[k].symbol, random_book(rng, float(mids[k]))))
    return events


def print_update_timings(rows: dict[str, np.ndarray]) -> None:
    """(a)'s table: calls, p50, p99 and mean of each row's microseconds per call."""
    print(f"  {'':<40} {'calls':>6} {'p50 us':>9} {'p99 us':>9} {'mean us':>9}")
    for name, us in rows.items():
        print(
            f"  {name:<40} {us.size:>6} {np.percentile(us, 50):>9.1f} "
            f"{np.percentile(us, 99):>9.1f} {us.mean():>9.1f}"
        )


def print_search_timings(rows: dict[str, np.ndarray]) -> None:
    """(b)'s table: calls, p50 and p99 of each row's microseconds per call, in milliseconds."""
    print(f"  {'':<40} {'calls':>6} {'p50 ms':>9} {'p99 ms':>9}")
    for name, us in rows.items():
        print(
            f"  {name:<40} {us.size:>6} {np.percentile(us, 50) / 1e3:>9.3f} "
            f"{np.percentile(us, 99) / 1e3:>9.3f}"
        )


def print_sizing(cycle: Any, books: dict[str, Book]) -> None:
    """For reference: the time to size `cycle` against its books, and what it makes."""
    sizing = per_call_us(lambda _: size_cycle(cycle, books), 200)
    size = size_cycle(cycle, books)
    profit = "no size pays" if size is None else f"{size.profit:.4f} {HOME}"
    print(
        f"  sizing the best cycle against its {LEVELS}-level books (for reference): "
        f"p50 {np.median(sizing):.0f} us, {profit}"
    )


def first_leg(cycles: int) -> dict[str, Any] | None:
    """(c): the arbitrage trader on paper against the simulator, books in hand -> first leg."""
    import tempfile
    from pathlib import Path

    import sqlalchemy as sa

    from bench.common import scratch_database
    from pipeline.exchanges.client import open_exchange
    from pipeline.exchanges.simulator.app import SimulatorConfig, running
    from pipeline.exchanges.simulator.market import Plant
    from pipeline.settings import load_settings
    from serving.arbitrage.trader import ArbitrageTrader
    from serving.kernel.broker import PaperBroker

    data = load_settings().data_dir
    if data is None:
        print("(c) skipped: no recorded market data (CRYPTOBOTS_DATA_DIR, ../shared/data)")
        return None
    symbols = ("BTC/USDT", "ETH/USDT", "ETH/BTC")
    config = SimulatorConfig(
        data_dir=data,
        shift_to_now=True,
        consistent_books=True,
        plants=(Plant("ETHBTC", 40.0, 3600.0),),
    )
    with (
        running(config) as sim,
        scratch_database("bench_arb") as engine,
        tempfile.TemporaryDirectory() as var,
    ):
        settings = load_settings(
            var_dir=Path(var),
            db_url=engine.url.render_as_string(hide_password=False),
            exchanges={"binance": {"ccxt_id": "binance", "url": sim.url}},
            arbitrage={
                "symbols": symbols,
                "min_edge_bps": 1.0,
                "max_cycle_notional": 1000.0,
                "max_cycles_per_hour": 10**9,
                "daily_loss_limit": 1e12,
                "paper_balances": {"USDT": 1e9},
            },
        )
        exchange = open_exchange(settings, "binance")
        trader = ArbitrageTrader(settings, engine, exchange, PaperBroker(exchange, 10.0))
        trader.start()
        books = trader._books(symbols)
        start_ms = int(time.time() * 1000)
        outcomes: dict[str, int] = {}
        for i in range(cycles + 20):
            trader.acted_on = None  # each call a new detection, though the books are the same
            seen = time.perf_counter()
            outcome = trader.on_books(books, seen, start_ms + i)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        with engine.connect() as conn:
            stored = (
                conn.execute(
                    sa.text("SELECT latency_ms FROM arb_opportunities ORDER BY detected_ms")
                )
                .scalars()
                .all()[20:]
            )
    ms = np.array([v for v in stored if v is not None], dtype=float)
    if ms.size == 0:
        print(f"(c) no cycle was traded: {outcomes}")
        return None
    p50, p99 = float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
    print("(c) detection to first leg handed to the paper broker (simulator, paper, Postgres):")
    print(f"  cycles traded {ms.size} ({outcomes}); books in hand -> broker.execute(leg 0):")
    print(f"  p50 {p50:.3f} ms, p99 {p99:.3f} ms, max {ms.max():.3f} ms")
    return {"traded": int(ms.size), "outcomes": outcomes, "p50_ms": p50, "p99_ms": p99}


if __name__ == "__main__":
    main()
