"""One exchange as a graph of currencies, and the cycles around it that pay after fees.

Currencies are nodes. Each market BASE/QUOTE (number k) gives two directed edges:

- edge 2k, QUOTE -> BASE: buy at the ask, rate (1 / ask) * (1 - taker_fee);
- edge 2k + 1, BASE -> QUOTE: sell at the bid, rate bid * (1 - taker_fee).

An edge weighs `-log(rate)`, so a trip whose rates multiply to more than 1 is a cycle of
negative weight. The fee is inside every weight: a cycle that pays only before fees has a
positive weight and is never reported. A side without a price weighs `inf`.

Two searches, both from and back to the home currency (`ArbitrageConfig.home`):

- `Triangles`: every directed 3-cycle home -> a -> b -> home, enumerated once into index
  arrays. `on_update(symbol)` re-evaluates only the cycles through the market whose book
  moved (what runs on every book update); `evaluate()` re-evaluates all of them.
- `CycleSearch`: cycles of 3 to `max_length` legs by Bellman-Ford limited to
  `max_length` relaxations (one vectorized min-plus step over the edge list each), with
  back-pointers. It keeps, for each length and each last leg, the best walk from home;
  walks that pass through home or revisit a currency are rejected. With at most 4 legs this
  finds the best simple cycle for every (length, last leg) exactly as long as no book is
  crossed after fees (every buy-then-sell of one market loses), because such walks could
  only beat a profitable cycle by containing a profitable 2-cycle. Beyond 4 legs it is a
  heuristic: a rejected walk may hide a simple cycle.

Pure numpy and the standard library: ccxt market dicts and order books are read as plain
mappings, nothing here imports ccxt, Airflow or TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

# Weights below -_EPS count as negative: float noise on a break-even cycle is not a profit.
_EPS = 1e-12
_NO_CYCLES = np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class ArbitrageConfig:
    """What the opportunity search looks for."""

    home: str = "USDT"
    """Currency every cycle starts and ends in; profits are counted in it."""

    max_length: int = 4
    """Most legs in a cycle: 3-cycles are enumerated, longer ones come from `CycleSearch`."""

    min_edge_bps: float = 0.0
    """Smallest gain after fees, in basis points of the amount put in, worth reporting."""

    def __post_init__(self) -> None:
        if not self.home:
            raise ValueError("arbitrage home currency is empty: name one, e.g. 'USDT'")
        if self.max_length < 3:
            raise ValueError(f"arbitrage max_length {self.max_length} is below 3: use 3 or more")
        if not self.min_edge_bps >= 0.0:
            raise ValueError(f"arbitrage min_edge_bps {self.min_edge_bps} must be >= 0")

    @property
    def max_weight(self) -> float:
        """A cycle is reported when its weight is below this (negative) number."""
        return -max(math.log1p(self.min_edge_bps / 1e4), _EPS)


@dataclass(frozen=True)
class MarketSpec:
    """One market of the exchange: its symbol, its two currencies and its taker fee."""

    symbol: str
    base: str
    quote: str
    taker_fee: float

    @classmethod
    def from_ccxt(cls, market: Mapping[str, Any]) -> MarketSpec:
        """Read a ccxt market dict (`exchange.markets[symbol]`): symbol, base, quote, taker."""
        return cls(
            symbol=str(market["symbol"]),
            base=str(market["base"]),
            quote=str(market["quote"]),
            taker_fee=float(market.get("taker") or 0.0),
        )


@dataclass(frozen=True)
class Leg:
    """One trade of a cycle: pay `source`, receive `target` on market `symbol`."""

    symbol: str
    side: Literal["buy", "sell"]
    source: str
    target: str
    taker_fee: float


@dataclass(frozen=True)
class Cycle:
    """A trip from home back to home, with its weight at the prices it was found at."""

    legs: tuple[Leg, ...]
    weight: float  # sum of -log(rate after fee) over the legs; negative pays

    @property
    def currencies(self) -> tuple[str, ...]:
        """The currencies visited, home first and last."""
        return (self.legs[0].source, *(leg.target for leg in self.legs))

    @property
    def rate(self) -> float:
        """Home received per unit of home put in, after fees, at the top of the books."""
        return math.exp(-self.weight)

    @property
    def edge_bps(self) -> float:
        """Gain after fees at the top of the books, in basis points."""
        return math.expm1(-self.weight) * 1e4


class ExchangeGraph:
    """Currencies and the two edges of every market, with one weight per edge.

    `weights[2k]` is market k's buy edge (quote -> base), `weights[2k + 1]` its sell edge.
    `update` rewrites both from a new top of book; the searches read `weights` in place.
    """

    def __init__(self, markets: Iterable[MarketSpec]) -> None:
        self.markets: tuple[MarketSpec, ...] = tuple(markets)
        self.index: dict[str, int] = {}
        self.market_index: dict[str, int] = {}
        pairs: dict[frozenset[str], str] = {}
        for k, market in enumerate(self.markets):
            if market.base == market.quote:
                raise ValueError(f"market {market.symbol} trades {market.base} against itself")
            if not 0.0 <= market.taker_fee < 1.0:
                raise ValueError(
                    f"market {market.symbol} taker fee {market.taker_fee} not in [0, 1)"
                )
            if market.symbol in self.market_index:
                raise ValueError(f"market {market.symbol} is listed twice")
            pair = frozenset((market.base, market.quote))
            if pair in pairs:
                raise ValueError(
                    f"markets {pairs[pair]} and {market.symbol} join the same currencies"
                )
            pairs[pair] = market.symbol
            self.market_index[market.symbol] = k
            for currency in (market.base, market.quote):
                self.index.setdefault(currency, len(self.index))
        self.currencies: tuple[str, ...] = tuple(self.index)
        base = np.array([self.index[m.base] for m in self.markets], dtype=np.int64)
        quote = np.array([self.index[m.quote] for m in self.markets], dtype=np.int64)
        self.src = np.empty(2 * len(self.markets), dtype=np.int64)
        self.dst = np.empty_like(self.src)
        self.src[0::2], self.dst[0::2] = quote, base  # buy: pay quote, get base
        self.src[1::2], self.dst[1::2] = base, quote  # sell: pay base, get quote
        self.weights = np.full(2 * len(self.markets), np.inf)
        self._fee_weight = [-math.log1p(-m.taker_fee) for m in self.markets]
        self.legs: tuple[Leg, ...] = tuple(
            leg
            for m in self.markets
            for leg in (
                Leg(m.symbol, "buy", m.quote, m.base, m.taker_fee),
                Leg(m.symbol, "sell", m.base, m.quote, m.taker_fee),
            )
        )
        """legs[e] is the trade that edge e stands for."""
        self.out: list[dict[int, int]] = [{} for _ in self.currencies]
        """out[u][v] is the edge from currency u to currency v."""
        for e, (u, v) in enumerate(zip(self.src.tolist(), self.dst.tolist(), strict=True)):
            self.out[u][v] = e

    @classmethod
    def from_ccxt(cls, markets: Mapping[str, Mapping[str, Any]]) -> ExchangeGraph:
        """The graph of a ccxt `load_markets()` dict: active spot markets only."""
        return cls(
            MarketSpec.from_ccxt(m)
            for m in markets.values()
            if m.get("spot", True) and m.get("active") is not False
        )

    def update(self, symbol: str, bid: float | None, ask: float | None) -> int:
        """Set market `symbol`'s two weights from its best bid and ask; returns its index.

        A missing or non-positive price makes that side unusable (`inf`).
        """
        k = self.market_index[symbol]
        fee_weight = self._fee_weight[k]
        w = self.weights
        w[2 * k] = math.log(ask) + fee_weight if ask is not None and ask > 0 else math.inf
        w[2 * k + 1] = -math.log(bid) + fee_weight if bid is not None and bid > 0 else math.inf
        return k

    def update_book(self, symbol: str, book: Mapping[str, Sequence[Sequence[float]]]) -> int:
        """`update` from a ccxt order book ({'bids': [[price, amount], ...], 'asks': ...}).

        ccxt sorts a book best level first, so the top of each side is its first level.
        """
        bids, asks = book.get("bids"), book.get("asks")
        return self.update(symbol, bids[0][0] if bids else None, asks[0][0] if asks else None)

    def cycle(self, edges: Sequence[int]) -> Cycle:
        """The cycle along `edges`, weighed at the current prices."""
        weight = float(sum(self.weights[e] for e in edges))
        return Cycle(tuple(self.legs[int(e)] for e in edges), weight)


class Triangles:
    """Every directed 3-cycle through home (or every one at all), as index arrays.

    `edges[:, i]` are the three edges of cycle i, in trading order; `values[i]` its weight
    when last evaluated. For each market the cycles through it (and their edges) are kept
    apart, so that a book update re-evaluates only those.
    """

    def __init__(
        self, graph: ExchangeGraph, config: ArbitrageConfig, *, every_triangle: bool = False
    ) -> None:
        self.graph = graph
        self.max_weight = config.max_weight
        found = _all_triangles(graph) if every_triangle else _home_triangles(graph, config.home)
        self.edges = np.array(found, dtype=np.int64).reshape(-1, 3).T.copy()
        self.values = np.full(self.edges.shape[1], np.inf)
        count = self.edges.shape[1]
        # A triangle never uses both edges of one market (that would be a 2-cycle), so each
        # cycle appears at most once in the list of its market.
        market = (self.edges // 2).ravel()
        cycle = np.tile(np.arange(count, dtype=np.int64), 3)
        order = np.argsort(market, kind="stable")
        bounds = np.cumsum(np.bincount(market, minlength=len(graph.markets)))[:-1]
        self._by_market = [
            (ids, self.edges[:, ids].copy()) for ids in np.split(cycle[order], bounds)
        ]

    def __len__(self) -> int:
        return self.edges.shape[1]

    def evaluate(self) -> np.ndarray:
        """Re-evaluate every cycle; returns the indices of those that pay."""
        w = self.graph.weights
        self.values = w[self.edges[0]] + w[self.edges[1]] + w[self.edges[2]]
        return np.flatnonzero(self.values < self.max_weight)

    def on_update(self, symbol: str) -> np.ndarray:
        """Re-evaluate the cycles through market `symbol`; returns those of them that pay."""
        ids, edges = self._by_market[self.graph.market_index[symbol]]
        if ids.size == 0:
            return _NO_CYCLES
        w = self.graph.weights
        values = w[edges[0]] + w[edges[1]] + w[edges[2]]
        self.values[ids] = values
        return ids[values < self.max_weight]

    def cycle(self, i: int) -> Cycle:
        """Cycle `i` with its legs, weighed at the current prices."""
        return self.graph.cycle(self.edges[:, i].tolist())


class CycleSearch:
    """Best cycles of 3 to `max_length` legs from home, by Bellman-Ford on the edge list.

    Step k relaxes every edge once: `dist_k[v] = min over edges u->v of dist_{k-1}[u] + w`,
    one gather, one add and one `minimum.reduceat` over the edges sorted by target. Home is
    removed from `dist_k` after each step, so walks never pass through it; the edges into
    home at step k close the walks of k legs.
    """

    def __init__(self, graph: ExchangeGraph, config: ArbitrageConfig) -> None:
        self.graph = graph
        self.max_length = config.max_length
        self.max_weight = config.max_weight
        if config.home not in graph.index:
            raise ValueError(f"home currency {config.home} is not traded on this exchange")
        self.home = graph.index[config.home]
        self._order = np.argsort(graph.dst, kind="stable")
        self._src = graph.src[self._order]
        dst = graph.dst[self._order]
        self._targets, self._starts, counts = np.unique(dst, return_index=True, return_counts=True)
        self._segment = np.repeat(np.arange(self._targets.size), counts)
        self._dst = dst
        self._positions = np.arange(dst.size)
        at = np.searchsorted(self._targets, self.home)
        if at == self._targets.size or self._targets[at] != self.home:
            self._home_in = slice(0, 0)
        else:
            self._home_in = slice(int(self._starts[at]), int(self._starts[at] + counts[at]))
        self._home_src = self._src[self._home_in]

    def run(self) -> list[Cycle]:
        """The cycles that pay at the current weights, best first."""
        w = self.graph.weights[self._order]
        n = len(self.graph.currencies)
        dist = np.full(n, np.inf)
        dist[self.home] = 0.0
        parents: list[np.ndarray] = []  # parents[k - 1][v]: sorted edge into v at step k
        found: list[Cycle] = []
        for k in range(1, self.max_length + 1):
            if k == self.max_length:  # last step: only the walks back home matter
                closed = dist[self._home_src] + w[self._home_in]
            else:
                cand = dist[self._src] + w
                closed = cand[self._home_in]
                best = np.minimum.reduceat(cand, self._starts)
                hit = cand == best[self._segment]
                parent = np.zeros(n, dtype=np.int64)
                parent[self._dst[hit]] = self._positions[hit]
                parents.append(parent)
                dist = np.full(n, np.inf)
                dist[self._targets] = best
                dist[self.home] = np.inf
            if k >= 3:
                at = np.flatnonzero(closed < self.max_weight)
                if at.size:
                    found += self._trace(self._home_in.start + at, closed[at], parents, k)
        found.sort(key=lambda c: c.weight)
        return found

    def _trace(
        self, last: np.ndarray, weights: np.ndarray, parents: list[np.ndarray], length: int
    ) -> list[Cycle]:
        """Follow the back-pointers of the walks closed by sorted edges `last`, all at once;
        keep those that start at home and visit every other currency once."""
        edges = np.empty((length, last.size), dtype=np.int64)
        nodes = np.empty_like(edges)  # nodes[j]: the currency edge j leaves from
        edges[-1] = last
        nodes[-1] = self._src[last]
        for j in range(length - 2, -1, -1):
            edges[j] = parents[j][nodes[j + 1]]
            nodes[j] = self._src[edges[j]]
        middle = np.sort(nodes[1:], axis=0)
        simple = (
            (nodes[0] == self.home)
            & (middle != self.home).all(axis=0)
            & (np.diff(middle, axis=0) != 0).all(axis=0)
        )
        legs = self.graph.legs
        rows = self._order[edges[:, simple]].T.tolist()
        return [
            Cycle(tuple(legs[e] for e in row), weight)
            for row, weight in zip(rows, weights[simple].tolist(), strict=True)
        ]


def _home_triangles(graph: ExchangeGraph, home: str) -> list[tuple[int, int, int]]:
    """(edge home->a, edge a->b, edge b->home) for every directed triangle through home."""
    if home not in graph.index:
        raise ValueError(f"home currency {home} is not traded on this exchange")
    h, out = graph.index[home], graph.out
    found = []
    for a, first in out[h].items():
        for b, second in out[a].items():
            third = out[b].get(h)
            if b != h and third is not None:
                found.append((first, second, third))
    return found


def _all_triangles(graph: ExchangeGraph) -> list[tuple[int, int, int]]:
    """Every directed triangle once, starting at its currency of smallest index."""
    out = graph.out
    found = []
    for u, edges in enumerate(out):
        for a, first in edges.items():
            if a < u:
                continue
            for b, second in out[a].items():
                third = out[b].get(u)
                if b > u and third is not None:
                    found.append((first, second, third))
    return found
