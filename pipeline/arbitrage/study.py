"""The arbitrage study: how often, how large and for how long an edge showed in stored candles.

For every configured triangle (three markets of one exchange) and venue group (one asset
on several exchanges) over a window of candles stored in `ohlcv`:

1. Align the legs on common open times. A slot where any leg has no stored candle, or a
   quarantined one (a candle that failed validation, or a conflicting print of it that
   validation set aside), is no observation: it never yields an opportunity, it is
   counted as dropped.
2. Per observation, the triangle's edge after three taker fees in both directions
   (`graph.py`'s cycles, weighed with every close as both bid and ask), or the net spread
   of every ordered venue pair after both taker fees and both rebalancing withdrawals
   (`cross.py`), with the quote conversion observed at that time where one venue quotes
   the asset in both quotes, else the configured rate.
3. Statistics per direction or pair, and for the best of them at each time: distribution
   (percentiles, histogram), the share above the threshold, how long edges above it
   lasted (runs of consecutive candles), and the profit they would have made at a
   realistic size: at most `max_cycle_notional`, and at most `VOLUME_SHARE` of the
   smallest leg's candle volume in quote terms.

Candle closes are not simultaneous quotes: the figures bound what the recorded prices
allowed, they are not capturable profit; `CAVEATS` say so in every report.

`study_windows` studies what is stored; `ingest_recorded` first fills the windows from the
recorded files through the exchange simulator, ccxt, validation and storage
(`pipeline.data.backfill`). numpy at import; SQLAlchemy, matplotlib and the ingest machinery
inside the functions that use them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.arbitrage.cross import (
    CrossCosts,
    Transfer,
    VenueQuote,
    gross_return,
    net_spread_bps,
    observed_conversion,
    opportunity,
    withdrawal_bps,
    withdrawal_value,
)
from pipeline.arbitrage.graph import ArbitrageConfig, ExchangeGraph, MarketSpec, Triangles
from pipeline.settings import Market
from pipeline.timeutil import DAY_MS, iso

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from pipeline.settings import ArbitrageSettings, Settings

DEFAULT_TAKER_FEE_BPS = 10.0
"""Taker fee per leg when `arbitrage.taker_fee_bps` is unset (Binance's standard 0.1%)."""
VOLUME_SHARE = 0.01
"""Largest share of the smallest leg's candle volume (quote terms) one trade may take."""
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
HISTOGRAM_BINS = 40

CAVEATS = (
    "Candle closes are not simultaneous quotes: each close is the last trade of its candle, "
    "printed at a different moment on each leg and venue, and is used here as both bid and "
    "ask (no bid-ask spread, no depth).",
    "Close-to-close differences are not capturable profit: the edges, runs and profits below "
    "say how far the recorded prices drifted apart, not what an order would have filled at. "
    "The profit column is hypothetical.",
    "Prefer the 1m series: an hourly close can be up to an hour away from the other leg's; "
    "1h figures mostly measure that timing mismatch.",
    "A slot where any leg has no stored candle or a quarantined one (failed validation, or "
    "a conflicting print set aside) is no observation and never an opportunity; the dropped "
    "counts say how many there were.",
)


@dataclass(frozen=True)
class StudyConfig:
    """What an opportunity costs and how large it may be."""

    threshold_bps: float
    """An edge above this (after fees) counts as an opportunity."""

    taker_fee_bps: float
    """Taker fee of every leg."""

    max_notional: float
    """Most home currency put into one trade (`arbitrage.max_cycle_notional`)."""

    home: str
    """The currency triangles start from and notionals are counted in."""

    withdrawals: Mapping[str, Transfer] = field(default_factory=dict)
    """Withdrawal fee (asset units) and time per asset, charged to every cross trade."""

    quote_rates: Mapping[str, float] = field(default_factory=dict)
    """USD value of each quote currency where no rate is observed."""

    volume_share: float = VOLUME_SHARE
    """Largest share of the smallest leg's candle volume (quote terms) one trade may take."""

    @classmethod
    def from_settings(
        cls, arbitrage: ArbitrageSettings, threshold_bps: float | None = None
    ) -> StudyConfig:
        """The study's costs from `Settings.arbitrage` (threshold overridable)."""
        fee = arbitrage.taker_fee_bps
        return cls(
            threshold_bps=arbitrage.study_threshold_bps if threshold_bps is None else threshold_bps,
            taker_fee_bps=DEFAULT_TAKER_FEE_BPS if fee is None else fee,
            max_notional=arbitrage.max_cycle_notional,
            home=arbitrage.home,
            withdrawals={k: Transfer(w.fee, w.minutes) for k, w in arbitrage.withdrawals.items()},
            quote_rates=dict(arbitrage.quote_rates),
        )

    @property
    def taker_fee(self) -> float:
        return self.taker_fee_bps / 1e4

    def usd_value(self, currency: str) -> float | None:
        """Configured USD value of one `currency`, None when not configured."""
        rate = self.quote_rates.get(currency)
        return None if rate is None else float(rate)

    def cross_costs(self) -> CrossCosts:
        """The costs of a cross trade of `max_notional` home currency, valued in USD."""
        home_usd = self.usd_value(self.home) or 1.0
        return CrossCosts(
            taker_fee=self.taker_fee,
            notional=self.max_notional * home_usd,
            withdrawals=self.withdrawals,
            quote_rates=self.quote_rates,
        )


@dataclass(frozen=True)
class Group:
    """One studied group: a triangle or a venue group, as configured."""

    kind: str  # "triangle" or "cross"
    markets: tuple[Market, ...]

    @property
    def timeframe(self) -> str:
        return self.markets[0].timeframe

    @property
    def name(self) -> str:
        if self.kind == "triangle":
            symbols = " ".join(m.symbol for m in self.markets)
            return f"{self.markets[0].exchange} {symbols} {self.timeframe}"
        venues = " ".join(f"{m.exchange}:{m.symbol}" for m in self.markets)
        return f"{self.markets[0].symbol.split('/')[0]} across {venues} {self.timeframe}"

    @property
    def slug(self) -> str:
        return f"{self.kind}-" + re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


def configured_groups(arbitrage: ArbitrageSettings) -> list[Group]:
    """Every triangle, then every venue group, in settings order."""
    return [Group("triangle", tuple(t)) for t in arbitrage.triangles] + [
        Group("cross", tuple(g)) for g in arbitrage.venue_groups
    ]


@dataclass(frozen=True)
class Series:
    """One market's stored candles in a window, and the open times it has quarantined."""

    ts: np.ndarray  # int64 open times, ascending
    close: np.ndarray
    volume: np.ndarray  # base units
    quarantined: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    @classmethod
    def of(
        cls,
        ts: Sequence[int],
        close: Sequence[float],
        volume: Sequence[float] | None = None,
        quarantined: Sequence[int] = (),
    ) -> Series:
        """From plain lists (volume defaults to ones)."""
        return cls(
            np.asarray(ts, dtype=np.int64),
            np.asarray(close, dtype=np.float64),
            np.ones(len(ts)) if volume is None else np.asarray(volume, dtype=np.float64),
            np.asarray(quarantined, dtype=np.int64),
        )


@dataclass(frozen=True)
class Aligned:
    """The legs on their common open times; what was dropped and why."""

    ts: np.ndarray  # observations: every leg stored and none quarantined
    close: np.ndarray  # (legs, observations)
    volume: np.ndarray  # (legs, observations)
    slots: int  # candle slots in the window
    missing: int  # slots dropped: some leg has no stored candle (none quarantined)
    quarantined: int  # slots dropped: some leg's candle is quarantined
    by_market: dict[str, dict[str, int]]


def align(series: Sequence[Series], names: Sequence[str], start: int, end: int, tf: int) -> Aligned:
    """Common observations of `series` on the timeframe grid of [start, end)."""
    grid = np.arange(-(-start // tf) * tf, end, tf, dtype=np.int64)
    present = np.array([np.isin(grid, s.ts) for s in series]).reshape(len(series), grid.size)
    bad = np.array([np.isin(grid, s.quarantined) for s in series]).reshape(present.shape)
    usable = present & ~bad
    observed = usable.all(axis=0)
    any_bad = bad.any(axis=0)
    close = np.empty((len(series), int(observed.sum())))
    volume = np.empty_like(close)
    times = grid[observed]
    for k, s in enumerate(series):
        at = np.searchsorted(s.ts, times)
        close[k], volume[k] = s.close[at], s.volume[at]
    by_market = {
        name: {"missing": int((~present[k]).sum()), "quarantined": int(bad[k].sum())}
        for k, name in enumerate(names)
    }
    return Aligned(
        ts=times,
        close=close,
        volume=volume,
        slots=int(grid.size),
        missing=int((~observed & ~any_bad).sum()),
        quarantined=int(any_bad.sum()),
        by_market=by_market,
    )


def runs(above: np.ndarray, ts: np.ndarray, tf: int) -> tuple[np.ndarray, np.ndarray]:
    """(first open time, length in candles) of every run of consecutive candles above.

    Consecutive means one timeframe apart: a dropped slot ends a run.
    """
    at = np.flatnonzero(above)
    if at.size == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    times = ts[at]
    breaks = np.flatnonzero(np.diff(times) != tf)
    first = np.r_[0, breaks + 1]
    last = np.r_[breaks, times.size - 1]
    return times[first], last - first + 1


def distribution(values: np.ndarray) -> dict[str, Any]:
    """Count, mean, extremes, percentiles and a histogram of `values` (bps)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"count": 0}
    counts, edges = np.histogram(values, bins=HISTOGRAM_BINS)
    return {
        "count": int(values.size),
        "mean": float(values.mean()),
        "min": float(values.min()),
        "max": float(values.max()),
        "percentiles": {
            f"p{p}": float(v)
            for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES), strict=True)
        },
        "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
    }


def series_stats(
    edge_bps: np.ndarray,
    profit: np.ndarray,
    size: np.ndarray,
    ts: np.ndarray,
    tf: int,
    threshold_bps: float,
) -> dict[str, Any]:
    """Distribution, share above the threshold, runs and hypothetical profit of one series."""
    above = np.isfinite(edge_bps) & (edge_bps > threshold_bps)
    starts, lengths = runs(above, ts, tf)
    minutes = lengths * (tf / 60_000)
    traded = above & (profit > 0)
    longest = int(np.argmax(lengths)) if lengths.size else None
    return {
        "distribution": distribution(edge_bps),
        "above": {
            "count": int(above.sum()),
            "share": float(above.mean()) if above.size else 0.0,
        },
        "runs": {
            "count": int(lengths.size),
            "mean_minutes": float(minutes.mean()) if minutes.size else 0.0,
            "median_minutes": float(np.median(minutes)) if minutes.size else 0.0,
            "max_minutes": float(minutes.max()) if minutes.size else 0.0,
            "longest_start": None if longest is None else iso(int(starts[longest])),
        },
        "profit": {
            "total": float(profit[traded].sum()),
            "trades": int(traded.sum()),
            "mean_size": float(size[traded].mean()) if traded.any() else 0.0,
        },
    }


@dataclass
class Studied:
    """A group's result (plain dict) and the arrays its plot is drawn from."""

    result: dict[str, Any]
    ts: np.ndarray
    labels: list[str]
    edges: np.ndarray  # (series, observations), bps


def reference_currency(markets: Sequence[Market], home: str) -> str:
    """`home` when the triangle trades it, else its most quoted currency."""
    currencies = [c for m in markets for c in m.symbol.split("/")]
    if home in currencies:
        return home
    quotes = [m.symbol.split("/")[1] for m in markets]
    return max(quotes, key=quotes.count)


def triangle_edges(
    markets: Sequence[Market], close: np.ndarray, taker_fee: float, start: str
) -> tuple[list[str], np.ndarray]:
    """Both directions' edge after fees (bps) per observation, closes as bid and ask."""
    specs = [MarketSpec(m.symbol, *m.symbol.split("/"), taker_fee) for m in markets]
    graph = ExchangeGraph(specs)
    triangles = Triangles(graph, ArbitrageConfig(home=start))
    fee_weight = -math.log1p(-taker_fee)
    log_close = np.log(close)
    weights = np.empty((2 * len(specs), close.shape[1]))
    weights[0::2] = log_close + fee_weight  # buy at the ask
    weights[1::2] = -log_close + fee_weight  # sell at the bid
    edges = triangles.edges
    values = weights[edges[0]] + weights[edges[1]] + weights[edges[2]]
    labels = [">".join(graph.cycle(edges[:, i].tolist()).currencies) for i in range(edges.shape[1])]
    return labels, np.expm1(-values) * 1e4


def _value_in(
    currency: str, reference: str, markets: Sequence[Market], close: np.ndarray
) -> np.ndarray:
    """Value of one `currency` in `reference` per observation, from the triangle's own market."""
    if currency == reference:
        return np.ones(close.shape[1])
    for k, m in enumerate(markets):
        base, quote = m.symbol.split("/")
        if (base, quote) == (currency, reference):
            return close[k]
        if (base, quote) == (reference, currency):
            return 1.0 / close[k]
    raise ValueError(f"no market joins {currency} and {reference} in {[str(m) for m in markets]}")


def study_triangle(group: Group, aligned: Aligned, config: StudyConfig) -> Studied:
    """Edges of the triangle in both directions, their statistics and hypothetical profit."""
    markets = group.markets
    reference = reference_currency(markets, config.home)
    labels, edges = triangle_edges(markets, aligned.close, config.taker_fee, reference)
    quote_volume = np.array(
        [
            aligned.volume[k]
            * aligned.close[k]
            * _value_in(m.symbol.split("/")[1], reference, markets, aligned.close)
            for k, m in enumerate(markets)
        ]
    ).reshape(len(markets), -1)
    home_usd, reference_usd = config.usd_value(config.home), config.usd_value(reference)
    cap = config.max_notional
    if reference != config.home and home_usd and reference_usd:
        cap = config.max_notional * home_usd / reference_usd
    size = np.minimum(cap, config.volume_share * quote_volume.min(axis=0, initial=np.inf))
    profit = size * edges / 1e4
    result = _group_result(group, aligned, labels, edges, profit, size, config)
    result["profit_currency"] = reference
    result["size_limit"] = (
        f"min({cap:g} {reference} (max_cycle_notional), {config.volume_share:.0%} of the "
        f"smallest leg's candle volume in {reference})"
    )
    return Studied(result, aligned.ts, labels, edges)


def study_cross(
    group: Group,
    aligned: Aligned,
    config: StudyConfig,
    conversions: Mapping[tuple[str, str], np.ndarray] | None = None,
) -> Studied:
    """Net spreads of every ordered venue pair, their statistics and hypothetical profit.

    `conversions[(sell_quote, buy_quote)]` is the value of one sell quote in buy quote
    units observed at each observation (NaN where none was); other times, and pairs of
    quotes without one, use the configured `quote_rates`.
    """
    costs = config.cross_costs()
    markets = group.markets
    base = markets[0].symbol.split("/")[0]
    quotes = [m.symbol.split("/")[1] for m in markets]
    quote_usd = np.array([costs.quote_value(q) for q in quotes])
    n = aligned.ts.size
    legs_usd = aligned.volume * aligned.close * quote_usd[:, None]
    size = np.minimum(costs.notional, config.volume_share * legs_usd.min(axis=0, initial=np.inf))
    labels: list[str] = []
    spreads, profits, extras = [], [], []
    for i, buy in enumerate(markets):
        for j, sell in enumerate(markets):
            if i == j:
                continue
            qi, qj = quotes[i], quotes[j]
            conversion = np.full(n, costs.configured_conversion(qj, qi))
            observed = None
            seen = (conversions or {}).get((qj, qi)) if qi != qj else None
            if seen is not None:
                conversion = np.where(np.isfinite(seen), seen, conversion)
                observed = float(np.isfinite(seen).mean()) if n else 0.0
            ask, bid = aligned.close[i], aligned.close[j]
            spread = net_spread_bps(costs, base, qi, qj, ask, bid, conversion)
            trade = size / quote_usd[i]
            gain = trade * gross_return(ask, bid, conversion, costs.taker_fee)
            gain -= withdrawal_value(costs, base, qj, ask, conversion)
            labels.append(f"buy {buy.exchange} sell {sell.exchange}")
            spreads.append(spread)
            profits.append(gain * quote_usd[i])
            extras.append(_pair_extras(costs, buy, sell, aligned, i, j, spread, conversion))
            if qi != qj:
                extras[-1]["conversion_observed_share"] = observed or 0.0
    edges = np.array(spreads).reshape(len(labels), n)
    profit = np.array(profits).reshape(edges.shape)
    result = _group_result(group, aligned, labels, edges, profit, size, config)
    for entry, extra in zip(result["series"], extras, strict=True):
        entry.update(extra)
    result["profit_currency"] = "USD"
    result["size_limit"] = (
        f"min({costs.notional:g} USD (max_cycle_notional), {config.volume_share:.0%} of the "
        "smaller venue's candle volume in USD)"
    )
    return Studied(result, aligned.ts, labels, edges)


def _pair_extras(
    costs: CrossCosts,
    buy: Market,
    sell: Market,
    aligned: Aligned,
    i: int,
    j: int,
    spread: np.ndarray,
    conversion: np.ndarray,
) -> dict[str, Any]:
    """What a pair's trade needs on each side (at the median price), its withdrawal cost
    and rebalance time, and its best observation as an opportunity."""
    if aligned.ts.size == 0:
        return {"inventory": None, "withdrawal_bps": None, "rebalance_minutes": None}
    price = float(np.median(aligned.close[i]))
    typical = opportunity(
        costs,
        VenueQuote(buy.exchange, buy.symbol, price, price),
        VenueQuote(sell.exchange, sell.symbol, price, price),
        float(np.median(conversion)),
    )
    base, buy_quote = buy.symbol.split("/")
    at = int(np.argmax(spread))
    best = opportunity(
        costs,
        VenueQuote(buy.exchange, buy.symbol, *[float(aligned.close[i, at])] * 2),
        VenueQuote(sell.exchange, sell.symbol, *[float(aligned.close[j, at])] * 2),
        float(conversion[at]),
    )
    return {
        "inventory": {
            "buy_venue": buy.exchange,
            "quote": typical.quote_needed,
            "quote_currency": buy_quote,
            "sell_venue": sell.exchange,
            "base": typical.base_needed,
            "base_currency": base,
            "at_price": price,
        },
        "withdrawal_bps": float(
            withdrawal_bps(
                costs, base, buy_quote, sell.symbol.split("/")[1], price, typical.conversion
            )
        ),
        "rebalance_minutes": typical.rebalance_minutes,
        "best": {"at": iso(int(aligned.ts[at])), **best.as_dict()},
    }


def _group_result(
    group: Group,
    aligned: Aligned,
    labels: list[str],
    edges: np.ndarray,
    profit: np.ndarray,
    size: np.ndarray,
    config: StudyConfig,
) -> dict[str, Any]:
    """Statistics per series and for the best series at each time (one trade per time)."""
    tf = group.markets[0].timeframe_ms
    threshold = config.threshold_bps
    series = [
        {"label": label, **series_stats(edges[k], profit[k], size, aligned.ts, tf, threshold)}
        for k, label in enumerate(labels)
    ]
    n = aligned.ts.size
    pick = np.argmax(edges, axis=0) if n else np.empty(0, dtype=np.int64)
    best_edge = edges[pick, np.arange(n)]
    best_profit = profit[pick, np.arange(n)]
    return {
        "kind": group.kind,
        "name": group.name,
        "slug": group.slug,
        "markets": [str(m) for m in group.markets],
        "timeframe": group.timeframe,
        "slots": aligned.slots,
        "observations": int(n),
        "dropped": {
            "missing": aligned.missing,
            "quarantined": aligned.quarantined,
            "by_market": aligned.by_market,
        },
        "zero_volume": int((aligned.volume <= 0).any(axis=0).sum()),
        "best": {
            "label": "best direction or pair at each time",
            **series_stats(best_edge, best_profit, size, aligned.ts, tf, threshold),
        },
        "series": series,
    }


# --- stored candles ------------------------------------------------------------------------


def load_series(engine: Engine, market: Market, start: int, end: int) -> Series:
    """`market`'s stored candles with open time in [start, end), and its quarantined times."""
    import sqlalchemy as sa

    from pipeline.db.schema import ohlcv, ohlcv_quarantine

    def key(table: sa.Table) -> sa.ColumnElement[bool]:
        return sa.and_(
            table.c.exchange == market.exchange,
            table.c.symbol == market.symbol,
            table.c.timeframe == market.timeframe,
            table.c.ts >= start,
            table.c.ts < end,
        )

    with engine.connect() as conn:
        candles = sa.select(ohlcv.c.ts, ohlcv.c.close, ohlcv.c.volume).where(key(ohlcv))
        rows = conn.execute(candles.order_by(ohlcv.c.ts)).all()
        bad = (
            conn.execute(sa.select(ohlcv_quarantine.c.ts).distinct().where(key(ohlcv_quarantine)))
            .scalars()
            .all()
        )
    data = np.array(rows, dtype=np.float64).reshape(-1, 3)
    return Series(
        data[:, 0].astype(np.int64), data[:, 1], data[:, 2], np.array(sorted(bad), dtype=np.int64)
    )


def stored_window(engine: Engine, group: Group, days: int) -> tuple[int, int] | None:
    """The last `days` of the legs' common stored range, None when a leg has nothing."""
    import sqlalchemy as sa

    from pipeline.db.schema import ohlcv

    firsts, ends = [], []
    with engine.connect() as conn:
        for m in group.markets:
            first, last = conn.execute(
                sa.select(sa.func.min(ohlcv.c.ts), sa.func.max(ohlcv.c.ts)).where(
                    ohlcv.c.exchange == m.exchange,
                    ohlcv.c.symbol == m.symbol,
                    ohlcv.c.timeframe == m.timeframe,
                )
            ).one()
            if first is None:
                return None
            firsts.append(int(first))
            ends.append(int(last) + m.timeframe_ms)
    return _last_days(max(firsts), min(ends), days, group.markets[0].timeframe_ms)


def _last_days(first: int, end: int, days: int, tf: int) -> tuple[int, int] | None:
    end -= end % tf
    start = max(first, end - days * DAY_MS)
    return (start, end) if end > start else None


def conversion_markets(group: Group) -> list[Market]:
    """Markets whose closes give an observed rate between the group's quotes: the asset in
    each other quote of the group, on every venue of the group (stored or not)."""
    if group.kind != "cross":
        return []
    base = group.markets[0].symbol.split("/")[0]
    quotes = sorted({m.symbol.split("/")[1] for m in group.markets})
    if len(quotes) < 2:
        return []
    own = {str(m) for m in group.markets}
    found = []
    for m in group.markets:
        for q in quotes:
            market = Market(exchange=m.exchange, symbol=f"{base}/{q}", timeframe=m.timeframe)
            if str(market) not in own:
                found.append(market)
    return found


def observed_conversions(
    engine: Engine, group: Group, ts: np.ndarray, start: int, end: int
) -> dict[tuple[str, str], np.ndarray]:
    """Per (sell quote, buy quote) of the group, the rate observed at each time in `ts` on
    the first venue quoting the asset in both (NaN where none did)."""
    base = group.markets[0].symbol.split("/")[0]
    quotes = sorted({m.symbol.split("/")[1] for m in group.markets})
    if len(quotes) < 2:
        return {}
    prices: dict[tuple[str, str], np.ndarray] = {}
    venues = list(dict.fromkeys(m.exchange for m in group.markets))
    for venue in venues:
        for q in quotes:
            market = Market(exchange=venue, symbol=f"{base}/{q}", timeframe=group.timeframe)
            s = load_series(engine, market, start, end)
            usable = ~np.isin(s.ts, s.quarantined)
            price = np.full(ts.size, np.nan)
            at = np.searchsorted(s.ts, ts)
            hit = at < s.ts.size
            hit[hit] &= s.ts[at[hit]] == ts[hit]
            hit[hit] &= usable[at[hit]]
            price[hit] = s.close[at[hit]]
            prices[(venue, q)] = price
    rates = {}
    for sell_quote in quotes:
        for buy_quote in quotes:
            if sell_quote == buy_quote:
                continue
            rate = np.full(ts.size, np.nan)
            for venue in venues:
                seen = observed_conversion(prices[(venue, buy_quote)], prices[(venue, sell_quote)])
                rate = np.where(np.isfinite(rate), rate, seen)
            rates[(sell_quote, buy_quote)] = rate
    return rates


def study_group(
    engine: Engine,
    group: Group,
    window: tuple[int, int] | None,
    config: StudyConfig,
    plot_path: Path | None = None,
) -> dict[str, Any]:
    """Study one group over the stored candles of `window` ([start, end) ms); with
    `plot_path`, also draw its PNG there. A plain dict (JSON-ready)."""
    tf = group.markets[0].timeframe_ms
    start, end = window or (0, 0)
    series = [load_series(engine, m, start, end) for m in group.markets]
    aligned = align(series, [str(m) for m in group.markets], start, end, tf)
    if group.kind == "triangle":
        studied = study_triangle(group, aligned, config)
    else:
        conversions = observed_conversions(engine, group, aligned.ts, start, end)
        studied = study_cross(group, aligned, config, conversions)
    result = studied.result
    result["window"] = (
        {"start": iso(start), "end": iso(end), "start_ms": start, "end_ms": end} if window else None
    )
    result["plot"] = None
    if plot_path is not None:
        result["plot"] = str(plot_group(studied, config.threshold_bps, plot_path))
    return result


# --- plots and text --------------------------------------------------------------------------


def plot_group(studied: Studied, threshold_bps: float, path: Path) -> Path:
    """The group's PNG: the best edge over time with the threshold, and every series'
    histogram. matplotlib's object API on the Agg canvas, imported here."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    path.parent.mkdir(parents=True, exist_ok=True)
    result = studied.result
    fig = Figure(figsize=(11, 7.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1)
    unit = "triangle edge" if result["kind"] == "triangle" else "net spread"
    fig.suptitle(
        f"{result['name']}\n{unit} after fees (bps) from candle closes: closes are not "
        "simultaneous quotes, differences are not capturable profit",
        fontsize=10,
    )
    colors = colormaps["tab10" if len(studied.labels) <= 10 else "tab20"].colors
    if studied.ts.size:
        times = studied.ts.astype("datetime64[ms]")
        best = studied.edges.max(axis=0)
        top.plot(times, best, linewidth=0.7, color="tab:blue", label="best at each time")
        locator = AutoDateLocator()
        top.xaxis.set_major_locator(locator)
        top.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        finite = studied.edges[np.isfinite(studied.edges)]
        low, high = np.percentile(finite, [0.5, 99.5])
        high = max(high, threshold_bps)
        bins = np.linspace(low, high + 1e-9, HISTOGRAM_BINS + 1)
        for k, label in enumerate(studied.labels):
            bottom.hist(
                np.clip(studied.edges[k], low, high),
                bins=bins,
                histtype="step",
                label=label,
                color=colors[k % len(colors)],
            )
    else:
        top.text(0.5, 0.5, "no observations", ha="center", va="center", transform=top.transAxes)
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
    top.axhline(threshold_bps, color="tab:red", linewidth=0.8, linestyle="--", label="threshold")
    top.axhline(0.0, color="grey", linewidth=0.6)
    top.set_ylabel("bps")
    top.set_xlabel("candle open (UTC)")
    top.legend(loc="lower left", fontsize=8)
    bottom.axvline(threshold_bps, color="tab:red", linewidth=0.8, linestyle="--")
    bottom.set_xlabel("bps (0.5-99.5 percentile range; the tails are piled at its ends)")
    bottom.set_ylabel("observations")
    if studied.labels and studied.ts.size:
        bottom.legend(loc="upper left", fontsize=7, ncol=2 if len(studied.labels) > 4 else 1)
    fig.savefig(path, format="png")
    return path


def render_text(report: Mapping[str, Any]) -> str:
    """The report as plain text: settings, caveats, one block per group."""
    lines = [
        f"Arbitrage study on stored candles ({report['generated_at']})",
        f"threshold {report['threshold_bps']:g} bps after fees; taker fee "
        f"{report['taker_fee_bps']:g} bps per leg; trade size at most {report['max_notional']:g} "
        f"{report['home']} (max_cycle_notional) and {report['volume_share']:.0%} of the smallest "
        "leg's candle volume in quote terms; cross spreads also pay both rebalancing "
        "withdrawals (arbitrage.withdrawals) as bps of max_cycle_notional; no transfer is "
        "ever automated",
        "",
        "CAVEATS",
        *(f"- {c}" for c in report["caveats"]),
        "",
    ]
    header = (
        f"  {'direction / pair':<32}{'p1':>8}{'p50':>8}{'p99':>8}{'max':>8}"
        f"{'>thr':>7}{'share':>8}{'runs':>6}{'longest':>9}{'profit*':>11}"
    )
    for g in report["groups"]:
        window = g["window"]
        span = f"{window['start']} .. {window['end']}" if window else "no stored candles"
        dropped = g["dropped"]
        lines += [
            f"{g['kind']} {g['name']}: {span}",
            f"  {g['slots']:,} slots, {g['observations']:,} observations; dropped "
            f"{dropped['missing']:,} for a missing candle and {dropped['quarantined']:,} for a "
            f"quarantined one; {g['zero_volume']:,} observations with a zero-volume leg "
            "(stale close, size 0)",
            f"  size: {g['size_limit']}; profit in {g['profit_currency']}",
        ]
        if g["plot"]:
            lines.append(f"  plot: {g['plot']}")
        if not g["observations"]:
            lines.append("")
            continue
        lines.append(header)
        for entry in [*g["series"], {**g["best"], "label": "best at each time"}]:
            lines.append(_row(entry, g["timeframe"]))
        for entry in g["series"]:
            if entry.get("inventory"):
                inv = entry["inventory"]
                minutes = entry["rebalance_minutes"]
                observed = entry.get("conversion_observed_share")
                conversion = (
                    ""
                    if observed is None
                    else f"; quote conversion observed at {observed:.0%} of the times"
                )
                lines.append(
                    f"  {entry['label']}: needs {inv['quote']:,.2f} {inv['quote_currency']} on "
                    f"{inv['buy_venue']} and {inv['base']:.6g} {inv['base_currency']} on "
                    f"{inv['sell_venue']}; withdrawals {entry['withdrawal_bps']:.1f} bps; "
                    f"rebalance {'unknown' if minutes is None else f'{minutes:g} min'} (manual)"
                    f"{conversion}"
                )
        lines.append("")
    lines.append(
        "* hypothetical: every candle above the threshold traded once at its size, closes as "
        "prices; see the caveats."
    )
    return "\n".join(lines)


def _row(entry: Mapping[str, Any], timeframe: str) -> str:
    d = entry["distribution"]
    p = d["percentiles"]
    runs_ = entry["runs"]
    return (
        f"  {entry['label'][:31]:<32}{p['p1']:>8.1f}{p['p50']:>8.1f}{p['p99']:>8.1f}"
        f"{d['max']:>8.1f}{entry['above']['count']:>7,}{entry['above']['share']:>8.2%}"
        f"{runs_['count']:>6,}{runs_['max_minutes']:>7g}m {entry['profit']['total']:>10,.2f}"
    )


# --- the study over configured groups --------------------------------------------------------


def study_windows(
    engine: Engine,
    groups: Sequence[Group],
    windows: Mapping[str, tuple[int, int] | None],
    config: StudyConfig,
    plot_dir: Path | None = None,
) -> dict[str, Any]:
    """Study every group over its window (keyed by slug); PNGs under `plot_dir`."""
    results = [
        study_group(
            engine,
            group,
            windows.get(group.slug),
            config,
            None if plot_dir is None else plot_dir / f"{group.slug}.png",
        )
        for group in groups
    ]
    return {
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "threshold_bps": config.threshold_bps,
        "taker_fee_bps": config.taker_fee_bps,
        "max_notional": config.max_notional,
        "home": config.home,
        "volume_share": config.volume_share,
        "caveats": list(CAVEATS),
        "groups": results,
    }


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
    return _last_days(max(firsts), min(ends), days, group.markets[0].timeframe_ms)


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
    from pipeline.exchanges.client import ExchangeClient, RetryPolicy, create_ccxt
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


def run_study(
    settings: Settings,
    engine: Engine,
    out_dir: Path,
    *,
    days: int | None = None,
    threshold_bps: float | None = None,
    ingest: bool = True,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The `arbitrage study` command: windows, optional ingest, study, report files.

    Windows are the last `days` (default `study_days`) of each group's common range: in the
    recorded files when ingesting, else in what is stored. Writes the PNGs, report.json and
    report.txt under `out_dir`; returns the report.
    """
    import json

    arbitrage = settings.arbitrage
    days = days or arbitrage.study_days
    config = StudyConfig.from_settings(arbitrage, threshold_bps)
    groups = configured_groups(arbitrage)
    if ingest:
        windows = {
            g.slug: recorded_window(settings.data_dir, g, days) if settings.data_dir else None
            for g in groups
        }
        report_ingest = ingest_recorded(settings, engine, groups, windows, progress)
    else:
        windows = {g.slug: stored_window(engine, g, days) for g in groups}
        report_ingest = []
    report = study_windows(engine, groups, windows, config, out_dir)
    report["days"] = days
    report["ingested"] = report_ingest
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    (out_dir / "report.txt").write_text(render_text(report) + "\n")
    return report
