"""Inventory drift across the venues of a cross trade, and the rebalance it calls for.

Cross trades run on inventory already held on each venue: every trade moves the asset
from the sell venue to the buy venue, and the quote the other way, so after a run of
spreads in one direction one venue has nothing left to sell. For each asset held on two
or more venues, a venue's share of the total is compared with an equal share; when it
drifts further than the band, a rebalance is proposed: move the richest venue's excess
to the poorest, at the configured withdrawal fee and delay. Nothing is ever withdrawn:
the proposal is a report (`/readyz`, the log, the metrics).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.errors import CryptobotsError
from serving.cross.metrics import CrossMetrics
from serving.cross.pair import FINAL, Sent
from serving.kernel.balances import exchange_totals

log = logging.getLogger("serving.cross")

READ_SECONDS = 30.0  # the live inventory is read again at least this often

Holdings = Mapping[str, Mapping[str, float]]  # venue -> asset -> amount


@dataclass(frozen=True)
class Rebalance:
    """A proposed transfer of `amount` of `asset` from one venue to another."""

    asset: str
    source: str
    target: str
    amount: float
    withdrawal_fee: float  # in units of the asset
    minutes: float | None  # until credited; None when not configured
    shares: dict[str, float]  # each venue's share of the asset now

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def describe(self) -> str:
        """One line for the log."""
        shares = ", ".join(f"{v} {s:.0%}" for v, s in sorted(self.shares.items()))
        when = "" if self.minutes is None else f", about {self.minutes:g} min"
        return (
            f"{self.asset} has drifted ({shares}): move {self.amount:.8g} {self.asset} from "
            f"{self.source} to {self.target} (withdrawal fee {self.withdrawal_fee:g} "
            f"{self.asset}{when})"
        )


def shares(holdings: Holdings, asset: str) -> dict[str, float]:
    """Each venue's share of `asset` over the venues; empty when none holds any."""
    amounts = {venue: max(0.0, held.get(asset, 0.0)) for venue, held in holdings.items()}
    total = sum(amounts.values())
    return {} if total <= 0 else {venue: a / total for venue, a in amounts.items()}


def proposals(
    holdings: Holdings,
    assets: tuple[str, ...],
    band: float,
    withdrawals: Mapping[str, tuple[float, float | None]],
) -> list[Rebalance]:
    """A rebalance for each of `assets` whose share on some venue is further than `band`
    from an equal share: the richest venue's excess over an equal share to the poorest
    venue. `withdrawals[asset]` is (fee in the asset, minutes)."""
    found = []
    venues = len(holdings)
    for asset in assets:
        share = shares(holdings, asset)
        if venues < 2 or not share:
            continue
        equal = 1.0 / venues
        if max(abs(s - equal) for s in share.values()) <= band:
            continue
        richest = max(share, key=lambda v: share[v])
        poorest = min(share, key=lambda v: share[v])
        total = sum(max(0.0, held.get(asset, 0.0)) for held in holdings.values())
        fee, minutes = withdrawals.get(asset, (0.0, None))
        found.append(
            Rebalance(
                asset=asset,
                source=richest,
                target=poorest,
                amount=(share[richest] - equal) * total,
                withdrawal_fee=fee,
                minutes=minutes,
                shares=share,
            )
        )
    return found


@dataclass
class Inventory:
    """What the account holds on each venue (read from the venues live, kept from the
    fills on paper), and the rebalances it calls for, reported when they change."""

    assets: tuple[str, ...]
    band: float
    withdrawals: Mapping[str, tuple[float, float | None]]
    metrics: CrossMetrics
    live: bool
    holdings: dict[str, dict[str, float]] = field(default_factory=dict)
    read_ms: int | None = None
    rebalances: list[Rebalance] = field(default_factory=list)

    def read(self, exchanges: Mapping[str, Any], now_ms: int, force: bool = False) -> None:
        """Live: every venue's balances again when older than READ_SECONDS (or `force`);
        then, when they were read or `force`d, the metrics and the proposals (a poll
        between two reads does neither)."""
        stale = self.read_ms is None or now_ms - self.read_ms > READ_SECONDS * 1000
        if self.live and (force or stale):
            for venue, exchange in exchanges.items():
                try:
                    self.holdings[venue] = exchange_totals(exchange, venue)
                except CryptobotsError as error:
                    log.warning("inventory on %s unread: %s", venue, error)
            self.read_ms = now_ms
        elif not force:
            return
        self.report()

    def apply(self, sent: Iterable[Sent]) -> None:
        """Paper: the holdings moved by what `sent` filled."""
        if self.live:
            return
        for s in sent:
            if s.execution.status not in FINAL:
                continue
            base, quote = s.leg.symbol.split("/")
            held = self.holdings.setdefault(s.leg.venue, {})
            held[base] = held.get(base, 0.0) + s.base
            held[quote] = held.get(quote, 0.0) + s.quote

    def held(self, venue: str, asset: str) -> float:
        return self.holdings.get(venue, {}).get(asset, 0.0)

    def report(self) -> None:
        """The holdings and proposals into the metrics; a WARNING per new proposal."""
        for venue, held in self.holdings.items():
            for asset in self.assets:
                self.metrics.inventory.labels(venue, asset).set(held.get(asset, 0.0))
        found = proposals(self.holdings, self.assets, self.band, self.withdrawals)
        for asset in self.assets:
            amount = next((r.amount for r in found if r.asset == asset), 0.0)
            self.metrics.rebalance.labels(asset).set(amount)
        if [(r.asset, r.source) for r in found] != [(r.asset, r.source) for r in self.rebalances]:
            for proposal in found:
                log.warning("rebalance proposed (nothing is moved): %s", proposal.describe())
        self.rebalances = found
