"""A cross trade's one-sided fill closed in bounded time.

After both legs, the asset bought on the buy venue and sold on the sell venue should
match (up to rounding dust). When one leg filled and the other did not (rejected, partly
filled, the venue timing out or down), the difference is exposure: base held that was
not sold, or base sold that was not bought. It is closed at market by the cheaper exit
at the current books: the hedge (the missing leg again, on its own venue) or the unwind
(the filled leg reversed, on its venue); when an exit fails, the other is tried, until
the exposure is below what either venue can trade or `unwind_seconds` have passed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pipeline.errors import CryptobotsError
from serving.cross.pair import Dispatcher, Leg, Sent, leg_client_id
from serving.kernel.lease import LeaseLost
from serving.kernel.market_rules import MarketRules

log = logging.getLogger("serving.cross")

Book = tuple[float, float]  # (best bid, best ask) of one venue's market
EXIT_SEQ = 10


@dataclass
class Closing:
    """How a trade's exposure was closed: the exit orders, and whether in time."""

    legs: list[Sent] = field(default_factory=list)  # the two legs, as finally settled
    exits: list[Sent] = field(default_factory=list)
    residual: float = 0.0  # base still exposed (below the venues' minimums when closed)
    closed: bool = True
    seconds: float = 0.0
    attempts: int = 0  # exit ids used: one per attempt, never reused


def exposure(legs: list[Sent]) -> float:
    """Base bought but not sold (> 0) or sold but not bought (< 0) over all legs so far."""
    return sum(sent.base for sent in legs)


def exits_for(
    excess: float, buy: Leg, sell: Leg, books: dict[str, Book], fee: float
) -> list[tuple[str, str, str]]:
    """(venue, symbol, side) of the exits for `excess` base, the cheaper one first.

    Base left over sells on either venue: the better bid pays more. Base missing buys on
    either venue: the lower ask costs less."""
    if excess > 0:
        options = [(sell.venue, sell.symbol), (buy.venue, buy.symbol)]  # hedge, then unwind
        options.sort(key=lambda v: -books[v[0]][0] * (1 - fee))
        return [(venue, symbol, "sell") for venue, symbol in options]
    options = [(buy.venue, buy.symbol), (sell.venue, sell.symbol)]
    options.sort(key=lambda v: books[v[0]][1] / (1 - fee))
    return [(venue, symbol, "buy") for venue, symbol in options]


def exit_amount(excess: float, side: str, fee: float) -> float:
    """Base to order so that `excess` is gone: a buy receives its amount less the fee."""
    return abs(excess) / (1 - fee) if side == "buy" else abs(excess)


def close_exposure(
    dispatcher: Dispatcher,
    trade: str,
    legs: list[Sent],
    books: Callable[[], dict[str, Book]],
    rules: dict[str, MarketRules],
    fee: float,
    unwind_seconds: float,
    now_ms: Callable[[], int],
    exits: Sequence[Sent] = (),
) -> Closing:
    """Close what `legs` and the earlier `exits` (a restart's) left exposed by market
    orders, the cheaper exit first, within `unwind_seconds`; see the module docstring.
    A lost lease (LeaseLost from the dispatcher's `before_send`) stops it at once."""
    started = time.monotonic()
    deadline = started + unwind_seconds
    legs = [dispatcher.settle(sent, deadline) for sent in legs]
    closing = Closing(legs=legs, exits=list(exits), attempts=len(exits))
    while True:
        excess = closing.residual = exposure(legs + closing.exits)
        side = "sell" if excess > 0 else "buy"
        if max(r.round_amount(exit_amount(excess, side, fee)) for r in rules.values()) <= 0:
            break
        if time.monotonic() - started > unwind_seconds:
            closing.closed = False
            log.error("cross %s: %s base still exposed after %ss", trade, excess, unwind_seconds)
            break
        try:
            seen = books()
        except CryptobotsError as error:
            log.warning("cross %s: books unreadable (%s): trying both exits", trade, error)
            seen = {legs[0].leg.venue: (1.0, 1.0), legs[1].leg.venue: (1.0, 1.0)}
        options = exits_for(excess, legs[0].leg, legs[1].leg, seen, fee)
        if not _one_exit(dispatcher, trade, closing, options, rules, excess, fee, deadline, now_ms):
            time.sleep(0.05)  # every exit failed: try again while time remains
    closing.seconds = time.monotonic() - started
    return closing


def _one_exit(
    dispatcher: Dispatcher,
    trade: str,
    closing: Closing,
    options: list[tuple[str, str, str]],
    rules: dict[str, MarketRules],
    excess: float,
    fee: float,
    deadline: float,
    now_ms: Callable[[], int],
) -> bool:
    """Send the exits in order until one fills something; whether one did. An exit the
    venue did not answer is looked up until the deadline before the next is tried."""
    for venue, symbol, side in options:
        amount = rules[venue].round_amount(exit_amount(excess, side, fee))
        if amount <= 0:
            continue
        seq = EXIT_SEQ + closing.attempts
        closing.attempts += 1
        leg = Leg(venue, symbol, side, amount, None, leg_client_id(trade, seq), seq)
        try:
            sent = dispatcher.settle(dispatcher.send(leg, now_ms()), deadline)
        except LeaseLost:
            raise
        except CryptobotsError as error:
            log.warning("cross %s: exit %s on %s failed: %s", trade, side, venue, error)
            continue
        closing.exits.append(sent)
        if sent.execution.filled > 0:
            return True
    return False


def realized(legs: list[Sent], conversion: float = 1.0) -> float:
    """Quote gained over all legs, in the buy venue's quote (the sell venue's quote
    counted at `conversion`), fees included: what the fills say, nothing estimated."""
    buy_venue = legs[0].leg.venue
    return sum(s.quote * (1.0 if s.leg.venue == buy_venue else conversion) for s in legs)
