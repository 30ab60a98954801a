"""Cross-exchange spreads on live books (`python -m pipeline arbitrage scan`): report only.

For every venue group of `settings.arbitrage.venue_groups`, the top of each venue's book
is fetched through ccxt (each venue is its own configured exchange: a real one, or a
simulator per venue), and every ordered pair of venues is priced by
`cross.cross_opportunities`: both taker fees, both withdrawals of the rebalance, the quote
conversion at the configured rates. Each opportunity says what it would need on each
side (the buy venue's quote, the sell venue's asset) and how long a rebalance would take.
Nothing is ever sent or transferred.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.arbitrage.cross import CrossOpportunity, VenueQuote, cross_opportunities
from pipeline.arbitrage.study_config import StudyConfig
from pipeline.errors import CryptobotsError
from pipeline.settings import Market, Settings


def fetch_quotes(
    settings: Settings, markets: tuple[Market, ...], open_venue: Callable[[str], Any]
) -> tuple[list[VenueQuote], list[str]]:
    """The best bid and ask of each market on its venue; and what could not be read, why."""
    quotes, skipped = [], []
    for market in markets:
        if market.exchange not in settings.exchanges:
            skipped.append(
                f"{market}: exchange {market.exchange!r} is not configured "
                f"(CRYPTOBOTS_EXCHANGES__{market.exchange.upper()}__URL=...)"
            )
            continue
        try:
            venue = open_venue(market.exchange)
            book = venue.call(
                f"{market.symbol} order book",
                lambda v=venue, s=market.symbol: v.client.fetch_order_book(s, 5),
                kind="depth",
            )
        except CryptobotsError as error:
            skipped.append(f"{market}: {error}")
            continue
        bids, asks = book.get("bids") or [], book.get("asks") or []
        if not bids or not asks:
            skipped.append(f"{market}: one side of the book is empty")
            continue
        quotes.append(
            VenueQuote(market.exchange, market.symbol, float(bids[0][0]), float(asks[0][0]))
        )
    return quotes, skipped


def scan(
    settings: Settings,
    *,
    min_spread_bps: float | None = None,
    open_venue: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """Every venue group's cross opportunities above `min_spread_bps` (default: the study
    threshold), best first, with the venues that could not be read."""
    from pipeline.exchanges.client import open_exchange

    opened: dict[str, Any] = {}

    def venue(name: str) -> Any:
        if name not in opened:
            opened[name] = (open_venue or (lambda n: open_exchange(settings, n)))(name)
        return opened[name]

    config = StudyConfig.from_settings(settings.arbitrage)
    threshold = config.threshold_bps if min_spread_bps is None else min_spread_bps
    costs = config.cross_costs()
    groups = []
    for markets in settings.arbitrage.venue_groups:
        quotes, skipped = fetch_quotes(settings, markets, venue)
        found: list[CrossOpportunity] = cross_opportunities(costs, quotes, threshold)
        groups.append(
            {
                "group": ", ".join(str(m) for m in markets),
                "quotes": [q.__dict__ for q in quotes],
                "opportunities": [o.as_dict() for o in found],
                "skipped": skipped,
                "scanned": len(quotes) >= 2,
            }
        )
    return {
        "threshold_bps": threshold,
        "notional_usd": costs.notional,
        "taker_fee_bps": config.taker_fee_bps,
        "groups": groups,
    }


def render(report: dict[str, Any]) -> str:
    """The scan as text for people."""
    lines = [
        f"cross-exchange spreads above {report['threshold_bps']:g} bps after two "
        f"{report['taker_fee_bps']:g} bps taker fees and the rebalance withdrawals, for "
        f"{report['notional_usd']:g} USD a trade; nothing is sent or transferred",
    ]
    for group in report["groups"]:
        lines.append(f"\n{group['group']}")
        for quote in group["quotes"]:
            lines.append(
                f"  {quote['venue']:>12} {quote['symbol']:<10} bid {quote['bid']:<14g} "
                f"ask {quote['ask']:g}"
            )
        if not group.get("scanned", True):
            lines.append("  not scanned: fewer than two of its venues could be read")
        elif not group["opportunities"]:
            lines.append("  no spread above the threshold")
        for o in group["opportunities"]:
            minutes = o["rebalance_minutes"]
            lines.append(
                f"  buy {o['buy_symbol']} on {o['buy_venue']} at {o['buy_price']:g}, sell on "
                f"{o['sell_venue']} at {o['sell_price']:g}: {o['spread_bps']:+.1f} bps net "
                f"({o['profit']:.2f} {o['buy_symbol'].split('/')[1]}); needs "
                f"{o['quote_needed']:.2f} {o['buy_symbol'].split('/')[1]} on {o['buy_venue']} "
                f"and {o['base_needed']:.6f} {o['asset']} on {o['sell_venue']}; rebalance "
                + ("time unknown" if minutes is None else f"{minutes:g} min")
            )
        for reason in group["skipped"]:
            lines.append(f"  skipped {reason}")
    return "\n".join(lines)
