"""Cross-exchange spreads: buy an asset on one venue at the ask, sell it on another at the bid.

For a trade of `notional` (in the value currency, USD) the buy venue A pays `notional`
converted into its quote, receives base after its taker fee; the sell venue B sells that
base at its bid, receives its quote after its taker fee. In units of A's quote:

    gross = bid_B * conversion / ask_A * (1 - fee)^2 - 1
    net_bps = gross * 1e4 - withdrawal_bps

`conversion` is the value of one unit of B's quote in A's quote: 1 when both quote the
same currency, else the rate observed at that time (e.g. one venue quoting the base in
both quotes) or the configured `quote_rates`. Rebalancing the two venues afterwards moves
the base bought back from A to B and the quote received back from B to A; both withdrawal
fees (in units of each asset) are charged to the trade, as bps of its size, and the slower
of the two transfers is the time to rebalance. Nothing here moves money: an opportunity
only says which inventory it needs on each side and how long the rebalance would take.

numpy and the standard library only (no ccxt, Airflow or TensorFlow).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipeline.errors import ConfigurationError


@dataclass(frozen=True)
class Transfer:
    """What withdrawing one asset costs: a fee in units of the asset, and a delay."""

    fee: float = 0.0
    minutes: float | None = None  # None: unknown


@dataclass(frozen=True)
class CrossCosts:
    """The costs a cross-exchange trade pays."""

    taker_fee: float
    """Taker fee of each of the two legs, a fraction (0.001 = 10 bps)."""

    notional: float
    """Trade size in the value currency (USD); withdrawal fees are bps of it."""

    withdrawals: Mapping[str, Transfer]
    """Per asset; an asset missing here withdraws for free in unknown time."""

    quote_rates: Mapping[str, float]
    """Value of one unit of each quote currency in the value currency, when none is observed."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.taker_fee < 1.0:
            raise ValueError(f"taker fee {self.taker_fee} is not in [0, 1)")
        if not self.notional > 0:
            raise ValueError(f"notional {self.notional} must be > 0")

    def transfer(self, asset: str) -> Transfer:
        """The withdrawal of `asset`; free and of unknown time when not configured."""
        return self.withdrawals.get(asset, Transfer())

    def quote_value(self, quote: str) -> float:
        """Configured value of one `quote` in the value currency."""
        if quote not in self.quote_rates:
            raise ConfigurationError(
                f"no rate for quote currency {quote}: add it to arbitrage.quote_rates "
                f'(CRYPTOBOTS_ARBITRAGE__QUOTE_RATES), e.g. {{"{quote}": 1.0}}'
            )
        return float(self.quote_rates[quote])

    def configured_conversion(self, sell_quote: str, buy_quote: str) -> float:
        """Value of one `sell_quote` in `buy_quote` from the configured rates (1 when equal)."""
        if sell_quote == buy_quote:
            return 1.0
        return self.quote_value(sell_quote) / self.quote_value(buy_quote)

    def rebalance_minutes(self, base: str, sell_quote: str) -> float | None:
        """Time until both transfers of a rebalance are credited (None when one is unknown)."""
        times = (self.transfer(base).minutes, self.transfer(sell_quote).minutes)
        return None if None in times else max(t for t in times if t is not None)


def observed_conversion(
    base_in_buy_quote: npt.ArrayLike, base_in_sell_quote: npt.ArrayLike
) -> np.ndarray:
    """Value of one sell-venue quote in buy-venue quote units, from one venue quoting the same
    base in both at the same time: price(base in buy quote) / price(base in sell quote).
    NaN where either price is missing or not positive."""
    a = np.asarray(base_in_buy_quote, dtype=np.float64)
    b = np.asarray(base_in_sell_quote, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = a / b
    return np.where((a > 0) & (b > 0) & np.isfinite(rate), rate, np.nan)


def gross_return(
    ask: npt.ArrayLike, bid: npt.ArrayLike, conversion: npt.ArrayLike, taker_fee: float
) -> np.ndarray:
    """Return of buying at `ask` and selling at `bid` (times `conversion`) after both fees."""
    ask = np.asarray(ask, dtype=np.float64)
    bid = np.asarray(bid, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return bid * np.asarray(conversion, dtype=np.float64) / ask * (1.0 - taker_fee) ** 2 - 1.0


def withdrawal_value(
    costs: CrossCosts, base: str, sell_quote: str, ask: npt.ArrayLike, conversion: npt.ArrayLike
) -> np.ndarray:
    """Both rebalancing withdrawals, in units of the buy venue's quote: the base fee at the
    buy price plus the sell quote's fee converted."""
    ask = np.asarray(ask, dtype=np.float64)
    return costs.transfer(base).fee * ask + costs.transfer(sell_quote).fee * np.asarray(
        conversion, dtype=np.float64
    )


def withdrawal_bps(
    costs: CrossCosts,
    base: str,
    buy_quote: str,
    sell_quote: str,
    ask: npt.ArrayLike,
    conversion: npt.ArrayLike,
) -> np.ndarray:
    """`withdrawal_value` as basis points of a trade of `costs.notional`."""
    size = costs.notional / costs.quote_value(buy_quote)
    return withdrawal_value(costs, base, sell_quote, ask, conversion) / size * 1e4


def net_spread_bps(
    costs: CrossCosts,
    base: str,
    buy_quote: str,
    sell_quote: str,
    ask: npt.ArrayLike,
    bid: npt.ArrayLike,
    conversion: npt.ArrayLike = 1.0,
) -> np.ndarray:
    """Net spread of buying `base` at `ask` (in `buy_quote`) and selling at `bid` (in
    `sell_quote`), after both taker fees and both withdrawals, in bps of `costs.notional`."""
    gross = gross_return(ask, bid, conversion, costs.taker_fee) * 1e4
    return gross - withdrawal_bps(costs, base, buy_quote, sell_quote, ask, conversion)


@dataclass(frozen=True)
class VenueQuote:
    """The top of one venue's book for one market (BASE/QUOTE)."""

    venue: str
    symbol: str
    bid: float
    ask: float

    @property
    def base(self) -> str:
        return self.symbol.split("/")[0]

    @property
    def quote(self) -> str:
        return self.symbol.split("/")[1]


@dataclass(frozen=True)
class CrossOpportunity:
    """Buy on one venue, sell on another: the net spread and what it needs on each side."""

    asset: str
    buy_venue: str
    buy_symbol: str
    buy_price: float  # the ask paid
    sell_venue: str
    sell_symbol: str
    sell_price: float  # the bid received
    conversion: float  # one sell quote in buy quote units
    spread_bps: float  # after both fees and both withdrawals, bps of the notional
    quote_needed: float  # on the buy venue, in its quote
    base_needed: float  # on the sell venue, in the asset
    rebalance_minutes: float | None  # both transfers credited; never started by us

    @property
    def profit(self) -> float:
        """Expected gain in the buy venue's quote, for the notional."""
        return self.quote_needed * self.spread_bps / 1e4

    def as_dict(self) -> dict[str, object]:
        """Plain values (JSON-ready)."""
        return {**self.__dict__, "profit": self.profit}


def opportunity(
    costs: CrossCosts, buy: VenueQuote, sell: VenueQuote, conversion: float | None = None
) -> CrossOpportunity:
    """The trade buy-on-`buy`, sell-on-`sell`, at `conversion` (default: configured rates)."""
    if buy.base != sell.base:
        raise ValueError(f"{buy.symbol} and {sell.symbol} do not trade the same asset")
    if conversion is None or not np.isfinite(conversion):
        conversion = costs.configured_conversion(sell.quote, buy.quote)
    spread = float(
        net_spread_bps(costs, buy.base, buy.quote, sell.quote, buy.ask, sell.bid, conversion)
    )
    quote_needed = costs.notional / costs.quote_value(buy.quote)
    return CrossOpportunity(
        asset=buy.base,
        buy_venue=buy.venue,
        buy_symbol=buy.symbol,
        buy_price=buy.ask,
        sell_venue=sell.venue,
        sell_symbol=sell.symbol,
        sell_price=sell.bid,
        conversion=float(conversion),
        spread_bps=spread,
        quote_needed=quote_needed,
        base_needed=quote_needed / buy.ask * (1.0 - costs.taker_fee),
        rebalance_minutes=costs.rebalance_minutes(buy.base, sell.quote),
    )


def cross_opportunities(
    costs: CrossCosts,
    quotes: Iterable[VenueQuote],
    min_spread_bps: float = 0.0,
    conversions: Mapping[tuple[str, str], float] | None = None,
) -> list[CrossOpportunity]:
    """Every ordered pair of venues whose net spread is above `min_spread_bps`, best first.

    `conversions[(sell_quote, buy_quote)]` is an observed rate; other pairs of quotes use
    the configured ones.
    """
    quotes = [q for q in quotes if q.bid > 0 and q.ask > 0]
    found = []
    for buy in quotes:
        for sell in quotes:
            if buy.venue == sell.venue or buy.base != sell.base:
                continue
            rate = (conversions or {}).get((sell.quote, buy.quote))
            candidate = opportunity(costs, buy, sell, rate)
            if candidate.spread_bps > min_spread_bps:
                found.append(candidate)
    found.sort(key=lambda o: -o.spread_bps)
    return found
