"""Arbitrage: negative cycles on hand-made graphs, sizing against hand-computable books.

Prices are round so that every expected figure can be checked by hand: a cycle's rate is
the product of its legs' rates, each times (1 - taker fee).
"""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.arbitrage import (
    ArbitrageConfig,
    Cycle,
    CycleSearch,
    ExchangeGraph,
    Leg,
    MarketSpec,
    Triangles,
    size_cycle,
)
from serving.kernel.market_rules import MarketRules

FEE = 0.001
CONFIG = ArbitrageConfig(home="USDT", max_length=4)


def graph_of(*markets: tuple[str, float | None, float | None], fee: float = FEE) -> ExchangeGraph:
    """A graph of markets given as (symbol, bid, ask), each with taker fee `fee`."""
    graph = ExchangeGraph(MarketSpec(s, *s.split("/"), fee) for s, _, _ in markets)
    for symbol, bid, ask in markets:
        graph.update(symbol, bid, ask)
    return graph


def eth_btc_triangle(fee: float) -> ExchangeGraph:
    """USDT -> ETH -> BTC -> USDT pays 1/10 * 0.1002 * 100 = 1.002 before fees (+20 bps)."""
    return graph_of(
        ("BTC/USDT", 100.0, 100.0), ("ETH/USDT", 10.0, 10.0), ("ETH/BTC", 0.1002, 0.1003), fee=fee
    )


def four_cycle_graph() -> ExchangeGraph:
    """USDT -> A -> B -> C -> USDT pays 0.1 * 2.1 * 2.5 * 2 = 1.05 before fees.

    Every triangle through USDT loses: the B/USDT spread (4.5 / 5.5) is too wide.
    """
    return graph_of(
        ("A/USDT", 10.0, 10.0),
        ("C/USDT", 2.0, 2.0),
        ("B/C", 2.5, 2.5),
        ("A/B", 2.1, 2.2),
        ("B/USDT", 4.5, 5.5),
    )


# --- graph ---------------------------------------------------------------------------


def test_market_gives_a_buy_edge_at_the_ask_and_a_sell_edge_at_the_bid_after_fee() -> None:
    graph = graph_of(("BTC/USDT", 9.0, 10.0))
    usdt, btc = graph.index["USDT"], graph.index["BTC"]
    assert (graph.src[0], graph.dst[0]) == (usdt, btc)
    assert (graph.src[1], graph.dst[1]) == (btc, usdt)
    assert graph.weights[0] == pytest.approx(-math.log(0.1 * 0.999))
    assert graph.weights[1] == pytest.approx(-math.log(9.0 * 0.999))


def test_side_without_a_price_weighs_infinity() -> None:
    graph = graph_of(("BTC/USDT", None, 10.0))
    assert math.isfinite(graph.weights[0])
    assert graph.weights[1] == math.inf


def test_update_book_reads_the_top_of_a_ccxt_order_book() -> None:
    graph = graph_of(("BTC/USDT", None, None))
    graph.update_book("BTC/USDT", {"bids": [[9.0, 1.0], [8.0, 5.0]], "asks": [[10.0, 2.0]]})
    assert graph.weights[0] == pytest.approx(-math.log(0.1 * 0.999))
    assert graph.weights[1] == pytest.approx(-math.log(9.0 * 0.999))


def test_graph_from_ccxt_markets_reads_taker_fees_and_skips_inactive_markets() -> None:
    markets: dict[str, dict[str, Any]] = {
        "BTC/USDT": {"symbol": "BTC/USDT", "base": "BTC", "quote": "USDT", "taker": 0.001},
        "ETH/USDT": {"symbol": "ETH/USDT", "base": "ETH", "quote": "USDT", "active": False},
    }
    graph = ExchangeGraph.from_ccxt(markets)
    assert [m.symbol for m in graph.markets] == ["BTC/USDT"]
    assert graph.markets[0].taker_fee == 0.001


def test_two_markets_between_the_same_currencies_are_refused() -> None:
    with pytest.raises(ValueError, match="join the same currencies"):
        ExchangeGraph(
            [MarketSpec("BTC/USDT", "BTC", "USDT", 0), MarketSpec("USDT/BTC", "USDT", "BTC", 0)]
        )


def test_config_refuses_a_max_length_below_three() -> None:
    with pytest.raises(ValueError, match="max_length 2"):
        ArbitrageConfig(max_length=2)


# --- 3-cycles ------------------------------------------------------------------------


def test_every_triangle_through_home_is_enumerated_in_both_directions() -> None:
    triangles = Triangles(eth_btc_triangle(FEE), CONFIG)
    cycles = {triangles.cycle(i).currencies for i in range(len(triangles))}
    assert cycles == {("USDT", "ETH", "BTC", "USDT"), ("USDT", "BTC", "ETH", "USDT")}


def test_every_triangle_mode_counts_each_directed_triangle_once() -> None:
    # 4 currencies, every pair traded: 4 triangles, 2 directions each.
    names = ["USDT", "BTC", "ETH", "BNB"]
    pairs = [(f"{b}/{q}", 1.0, 1.0) for i, q in enumerate(names) for b in names[i + 1 :]]
    assert len(Triangles(graph_of(*pairs), CONFIG, every_triangle=True)) == 8


def test_triangle_that_pays_only_before_fees_is_not_reported() -> None:
    # 1.002 * 0.999**3 = 0.999: a loss of 10 bps after three taker fees.
    graph = eth_btc_triangle(FEE)
    assert Triangles(graph, CONFIG).evaluate().size == 0
    assert CycleSearch(graph, CONFIG).run() == []


def test_triangle_that_pays_after_fees_is_reported_with_its_legs_and_edge() -> None:
    triangles = Triangles(eth_btc_triangle(0.0), CONFIG)
    (found,) = triangles.evaluate()
    cycle = triangles.cycle(int(found))
    assert cycle.currencies == ("USDT", "ETH", "BTC", "USDT")
    assert [(leg.symbol, leg.side) for leg in cycle.legs] == [
        ("ETH/USDT", "buy"),
        ("ETH/BTC", "sell"),
        ("BTC/USDT", "sell"),
    ]
    assert cycle.rate == pytest.approx(1.002)
    assert cycle.edge_bps == pytest.approx(20.0)


def test_book_update_reevaluates_the_cycles_through_its_market() -> None:
    graph = graph_of(
        ("BTC/USDT", 100.0, 100.0), ("ETH/USDT", 10.0, 10.0), ("ETH/BTC", 0.1, 0.1003), fee=0.0
    )
    triangles = Triangles(graph, CONFIG)
    assert triangles.evaluate().size == 0
    graph.update("ETH/BTC", 0.1002, 0.1003)
    (found,) = triangles.on_update("ETH/BTC")
    assert triangles.cycle(int(found)).currencies == ("USDT", "ETH", "BTC", "USDT")
    incremental = triangles.values.copy()
    triangles.evaluate()
    np.testing.assert_allclose(incremental, triangles.values)


def test_market_without_a_price_takes_its_cycles_out() -> None:
    graph = eth_btc_triangle(0.0)
    triangles = Triangles(graph, CONFIG)
    graph.update("ETH/BTC", None, 0.1003)
    assert triangles.on_update("ETH/BTC").size == 0


def test_min_edge_bps_hides_cycles_that_pay_less() -> None:
    graph = eth_btc_triangle(0.0)  # +20 bps
    assert Triangles(graph, ArbitrageConfig(min_edge_bps=19.0)).evaluate().size == 1
    assert Triangles(graph, ArbitrageConfig(min_edge_bps=21.0)).evaluate().size == 0


# --- longer cycles -------------------------------------------------------------------


def test_four_cycle_is_found_when_no_triangle_pays() -> None:
    graph = four_cycle_graph()
    assert len(Triangles(graph, CONFIG)) == 4
    assert Triangles(graph, CONFIG).evaluate().size == 0
    (cycle,) = CycleSearch(graph, CONFIG).run()
    assert cycle.currencies == ("USDT", "A", "B", "C", "USDT")
    assert [(leg.symbol, leg.side) for leg in cycle.legs] == [
        ("A/USDT", "buy"),
        ("A/B", "sell"),
        ("B/C", "sell"),
        ("C/USDT", "sell"),
    ]
    assert cycle.rate == pytest.approx(1.05 * 0.999**4)


def test_four_cycle_is_not_searched_when_max_length_is_three() -> None:
    assert CycleSearch(four_cycle_graph(), ArbitrageConfig(max_length=3)).run() == []


def test_search_reports_a_paying_triangle_too() -> None:
    (cycle,) = CycleSearch(eth_btc_triangle(0.0), CONFIG).run()
    assert cycle.currencies == ("USDT", "ETH", "BTC", "USDT")
    assert cycle.edge_bps == pytest.approx(20.0)


def brute_force_cycles(graph: ExchangeGraph, home: str, max_length: int) -> list[tuple[int, ...]]:
    """Every simple cycle of 3..max_length edges from home, by depth-first search."""
    h, found = graph.index[home], []

    def walk(node: int, edges: tuple[int, ...], seen: frozenset[int]) -> None:
        for nxt, edge in graph.out[node].items():
            if nxt == h and len(edges) >= 2:
                found.append((*edges, edge))
            elif nxt not in seen and len(edges) + 1 < max_length:
                walk(nxt, (*edges, edge), seen | {nxt})

    walk(h, (), frozenset({h}))
    return found


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_search_finds_the_best_paying_cycle_for_every_length_and_last_leg(seed: int) -> None:
    # Random books around fair values, never crossed: what the search's exactness needs.
    rng = np.random.default_rng(seed)
    names = ["USDT", "A", "B", "C", "D", "E"]
    value = dict(zip(names, np.exp(rng.normal(0.0, 2.0, len(names))), strict=True))
    pairs = [(b, q) for i, q in enumerate(names) for b in names[i + 1 :] if rng.random() < 0.7]
    fee = float(rng.choice([0.0, 0.001]))
    graph = ExchangeGraph(MarketSpec(f"{b}/{q}", b, q, fee) for b, q in pairs)
    if "USDT" not in graph.index:
        return
    for b, q in pairs:
        mid = value[b] / value[q] * math.exp(rng.normal(0.0, 0.02))
        half_spread = mid * rng.uniform(0.0, 0.002)
        graph.update(f"{b}/{q}", mid - half_spread, mid + half_spread)
    paying = [c for c in brute_force_cycles(graph, "USDT", 4) if graph.cycle(c).weight < -1e-12]
    best: dict[tuple[int, int], float] = {}
    for edges in paying:
        key = (len(edges), edges[-1])
        best[key] = min(best.get(key, math.inf), graph.cycle(edges).weight)
    found = CycleSearch(graph, CONFIG).run()
    got = {
        (len(c.legs), graph.out[graph.index[c.currencies[-2]]][graph.index["USDT"]]): c.weight
        for c in found
    }
    assert got.keys() == best.keys()
    for key, weight in best.items():
        assert got[key] == pytest.approx(weight, abs=1e-12)
    triangles = Triangles(graph, CONFIG)
    assert {tuple(triangles.edges[:, i]) for i in triangles.evaluate()} == {
        c for c in paying if len(c) == 3
    }


# --- sizing --------------------------------------------------------------------------


def a_b_cycle(fee: float = 0.0) -> Cycle:
    """USDT -> A (buy A/USDT) -> B (sell A/B) -> USDT (sell B/USDT)."""
    return Cycle(
        (
            Leg("A/USDT", "buy", "USDT", "A", fee),
            Leg("A/B", "sell", "A", "B", fee),
            Leg("B/USDT", "sell", "B", "USDT", fee),
        ),
        weight=0.0,
    )


def books(a_usdt_asks: list[list[float]], a_b_bids: list[list[float]] | None = None) -> dict:
    """Books of the A/B cycle: 1 A sells for 2 B, 1 B for 6 USDT (a 1.2 rate at 10 USDT/A)."""
    return {
        "A/USDT": {"bids": [[9.0, 5.0]], "asks": a_usdt_asks},
        "A/B": {"bids": a_b_bids or [[2.0, 5.0]], "asks": [[2.1, 5.0]]},
        "B/USDT": {"bids": [[6.0, 100.0]], "asks": [[6.1, 100.0]]},
    }


def rules(
    step: float | None = None, min_amount: float | None = None, min_cost: float | None = None
):
    """Market rules read from a ccxt market dict (TICK_SIZE precision, as binance loads)."""
    return MarketRules.from_ccxt(
        {
            "precision": {"amount": step, "price": None},
            "limits": {"amount": {"min": min_amount}, "cost": {"min": min_cost}},
        }
    )


def test_size_stops_at_the_level_where_the_cycle_stops_paying() -> None:
    # Level 1 of A/USDT: 10 -> 12 USDT (+2); level 2 at 13 returns 12 for 13 (a loss).
    size = size_cycle(a_b_cycle(), books([[10.0, 1.0], [13.0, 1.0]]))
    assert size is not None
    assert (size.start, size.end) == pytest.approx((10.0, 12.0))
    assert size.profit == pytest.approx(2.0)
    assert size.profit_bps == pytest.approx(2000.0)
    assert [leg.amount for leg in size.legs] == pytest.approx([1.0, 1.0, 2.0])


def test_size_is_limited_by_the_depth_of_a_middle_leg() -> None:
    # A/B pays 2 B per A for 0.5 A only, then 1.5 (0.1 * 1.5 * 6 = 0.9: a loss).
    size = size_cycle(a_b_cycle(), books([[10.0, 1.0], [13.0, 1.0]], [[2.0, 0.5], [1.5, 10.0]]))
    assert size is not None
    assert (size.start, size.end, size.profit) == pytest.approx((5.0, 6.0, 1.0))
    assert size.legs[1].amount == pytest.approx(0.5)
    assert size.legs[1].price == 2.0


def test_limit_price_is_the_worst_level_walked_and_average_price_their_mean() -> None:
    # Both levels pay (12/10 and 12/11): buy 2 A for 21 USDT, sell for 24.
    size = size_cycle(a_b_cycle(), books([[10.0, 1.0], [11.0, 1.0]]))
    assert size is not None
    buy = size.legs[0]
    assert (buy.amount, buy.price, buy.average_price) == pytest.approx((2.0, 11.0, 10.5))
    assert (size.start, size.end, size.profit) == pytest.approx((21.0, 24.0, 3.0))


def test_max_start_caps_the_home_put_in() -> None:
    size = size_cycle(a_b_cycle(), books([[10.0, 1.0], [11.0, 1.0]]), max_start=5.0)
    assert size is not None
    assert (size.start, size.end) == pytest.approx((5.0, 6.0))


def test_taker_fee_is_taken_from_what_every_leg_receives() -> None:
    size = size_cycle(a_b_cycle(FEE), books([[10.0, 1.0], [13.0, 1.0]]))
    assert size is not None
    assert [leg.received for leg in size.legs] == pytest.approx(
        [0.999, 0.999 * 2 * 0.999, 0.999 * 2 * 0.999 * 6 * 0.999]
    )
    assert size.profit == pytest.approx(12 * 0.999**3 - 10)


def test_buy_amount_rounds_down_to_the_step_at_the_best_level_boundary() -> None:
    # 1.1 A at 10 pays; rounded to a 0.25 step that is 1.0 A (1.25 would reach the 20 level).
    size = size_cycle(a_b_cycle(), books([[10.0, 1.1], [20.0, 1.0]]), {"A/USDT": rules(step=0.25)})
    assert size is not None
    assert size.legs[0].amount == 1.0
    assert (size.start, size.end, size.profit) == pytest.approx((10.0, 12.0, 2.0))


def test_every_leg_is_rounded_down_to_its_amount_step() -> None:
    # 1 A bought; A/B sells 0.9 A (step 0.3) for 1.8 B; B/USDT sells 1.5 B (step 0.5) at 8.
    book = books([[10.0, 1.0]])
    book["B/USDT"]["bids"] = [[8.0, 100.0]]
    size = size_cycle(a_b_cycle(), book, {"A/B": rules(step=0.3), "B/USDT": rules(step=0.5)})
    assert size is not None
    assert [leg.amount for leg in size.legs] == pytest.approx([1.0, 0.9, 1.5])
    assert (size.start, size.end, size.profit) == pytest.approx((10.0, 12.0, 2.0))


def test_no_size_when_the_minimum_amount_reaches_levels_that_lose() -> None:
    # 2 A is the minimum: 30 USDT for 24 back.
    cycle, book = a_b_cycle(), books([[10.0, 1.0], [20.0, 1.0]])
    assert size_cycle(cycle, book, {"A/USDT": rules(min_amount=2.0)}) is None


def test_no_size_when_the_last_leg_cannot_reach_its_minimum_cost() -> None:
    cycle, book = a_b_cycle(), books([[10.0, 1.0]])  # at most 12 USDT comes back
    assert size_cycle(cycle, book, {"B/USDT": rules(min_cost=15.0)}) is None


def test_size_grows_to_a_minimum_cost_while_that_still_pays() -> None:
    # 15 USDT out needs 2.5 B = 1.25 A = 10 + 0.25 * 12.5 = 13.125 USDT in: +1.875.
    cycle, book = a_b_cycle(), books([[10.0, 1.0], [12.5, 1.0]])
    size = size_cycle(cycle, book, {"B/USDT": rules(min_cost=15.0)})
    assert size is not None
    assert (size.start, size.end, size.profit) == pytest.approx((13.125, 15.0, 1.875), rel=1e-6)


def test_no_size_when_a_leg_has_an_empty_book() -> None:
    book = books([[10.0, 1.0]])
    book["A/B"]["bids"] = []
    assert size_cycle(a_b_cycle(), book) is None


def test_package_imports_neither_ccxt_nor_airflow_nor_tensorflow() -> None:
    code = (
        "import sys, pipeline.arbitrage; "
        "print([m for m in ('ccxt', 'airflow', 'tensorflow') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_leg_receives_walks_the_book_with_the_fee_and_stops_at_its_depth() -> None:
    from pipeline.arbitrage import Leg, leg_receives

    book = {"bids": [[100.0, 1.0], [99.0, 2.0]], "asks": [[101.0, 1.0], [102.0, 1.0]]}
    sell = Leg("X/USDT", "sell", "X", "USDT", 0.001)
    assert leg_receives(sell, book, 2.0) == pytest.approx((100.0 + 99.0) * 0.999)
    assert leg_receives(sell, book, 10.0) == pytest.approx((100.0 + 2 * 99.0) * 0.999)
    buy = Leg("X/USDT", "buy", "USDT", "X", 0.0)
    assert leg_receives(buy, book, 101.0 + 51.0) == pytest.approx(1.5)
