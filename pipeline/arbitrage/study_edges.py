"""A study's opportunities: per observation, a triangle's edge in both directions or every
venue pair's net spread after fees, at a realistic size and with its hypothetical profit,
summarized per series and for the best at each time (`Studied`). Pure numpy over aligned
observations; the candles come from `study_candles`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.arbitrage.cross import (
    CrossCosts,
    VenueQuote,
    gross_return,
    net_spread_bps,
    observed_conversion,
    opportunity,
    withdrawal_bps,
    withdrawal_value,
)
from pipeline.arbitrage.graph import ArbitrageConfig, ExchangeGraph, MarketSpec, Triangles
from pipeline.arbitrage.study_config import Group, StudyConfig
from pipeline.arbitrage.study_stats import Aligned, series_stats
from pipeline.settings import Market
from pipeline.timeutil import iso


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


def conversion_rates(
    group: Group, closes: Mapping[tuple[str, str], np.ndarray], n: int
) -> dict[tuple[str, str], np.ndarray]:
    """Per (sell quote, buy quote) of the group, the rate observed at each of `n` times on
    the first venue quoting the asset in both (NaN where none did), from the closes per
    (venue, quote) that `study_candles.observed_closes` loads."""
    quotes = sorted({m.symbol.split("/")[1] for m in group.markets})
    venues = list(dict.fromkeys(m.exchange for m in group.markets))
    rates = {}
    for sell_quote in quotes:
        for buy_quote in quotes:
            if sell_quote == buy_quote:
                continue
            rate = np.full(n, np.nan)
            for venue in venues:
                seen = observed_conversion(closes[(venue, buy_quote)], closes[(venue, sell_quote)])
                rate = np.where(np.isfinite(rate), rate, seen)
            rates[(sell_quote, buy_quote)] = rate
    return rates
