"""What a study covers and on what terms: the configured groups (triangles and venue
groups), the costs, threshold and sizes it charges them (`StudyConfig`), and the caveats
every report of it carries. Plain values: no statistics, database or plotting.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipeline.arbitrage.cross import CrossCosts, Transfer
from pipeline.settings import Market

if TYPE_CHECKING:
    from pipeline.settings import ArbitrageSettings

DEFAULT_TAKER_FEE_BPS = 10.0
"""Taker fee per leg when `arbitrage.taker_fee_bps` is unset (Binance's standard 0.1%)."""
VOLUME_SHARE = 0.01
"""Largest share of the smallest leg's candle volume (quote terms) one trade may take."""

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
