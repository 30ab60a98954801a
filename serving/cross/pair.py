"""One cross-exchange trade: its two legs, sized on the inventory each venue holds, sent
at once.

The buy leg spends the buy venue's quote for the asset, the sell leg sells the same
amount of the asset (net of the buy's fee) from the sell venue's inventory; both are
limit IOC orders at the prices the spread was seen at, with client order ids derived
from the trade's id, so a restart that finds the trade finds its legs. They are handed
to one thread each of a pool started once, so the second leg never waits for the first
one's round trip.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from pipeline.arbitrage.cross import CrossOpportunity
from pipeline.errors import CryptobotsError, ExchangeRejected, TemporaryExchangeError
from serving.kernel.broker import Broker
from serving.kernel.execution import Execution
from serving.kernel.market_rules import MarketRules

CLIENT_ID_PREFIX = "cc"  # hex like the rest: Kraken takes 32 hex digits as a client id
FINAL = ("filled", "expired", "rejected", "canceled")  # an order's states that never change


def trade_id(account: str, opportunity: CrossOpportunity, detected_ms: int) -> str:
    """Deterministic id of a cross trade: account, venues, markets and detection time."""
    o = opportunity
    key = f"{account}|{o.buy_venue}:{o.buy_symbol}>{o.sell_venue}:{o.sell_symbol}|{detected_ms}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def leg_client_id(trade: str, seq: int) -> str:
    """Client order id of leg `seq` of a trade: 0 the buy, 1 the sell, 10.. the exits."""
    return f"{CLIENT_ID_PREFIX}{hashlib.sha256(f'{trade}|{seq}'.encode()).hexdigest()[:30]}"


@dataclass(frozen=True)
class Leg:
    """One order of a cross trade on one venue."""

    venue: str
    symbol: str
    side: str
    amount: float
    price: float | None  # None: a market order (an exit)
    client_id: str
    seq: int


@dataclass(frozen=True)
class Sent:
    """A leg and what its venue said, with when it was handed to the broker."""

    leg: Leg
    execution: Execution
    handed_at: float  # time.perf_counter() just before the broker was called

    @property
    def base(self) -> float:
        """Base this leg moved into our inventory, net of a fee charged in base
        (negative: base that left it)."""
        fee_base = self.execution.fee if self.execution.fee_asset == "base" else 0.0
        filled = self.execution.filled
        return filled - fee_base if self.leg.side == "buy" else -(filled + fee_base)

    @property
    def quote(self) -> float:
        """Quote this leg moved into our inventory, net of a fee charged in quote."""
        fee_quote = self.execution.fee if self.execution.fee_asset == "quote" else 0.0
        cost = self.execution.cost
        return -(cost + fee_quote) if self.leg.side == "buy" else cost - fee_quote


def depth_size(
    asks: list[list[float]], bids: list[list[float]], fee: float, conversion: float = 1.0
) -> tuple[float, float, float]:
    """How much base the two books trade at a profit after both fees, walking the buy
    venue's asks and the sell venue's bids together level by level while the pair of
    levels still pays: (base, worst ask used, worst bid used); (0, 0, 0) when none pays."""
    size, worst_ask, worst_bid = 0.0, 0.0, 0.0
    i = j = 0
    ask_left = float(asks[0][1]) if asks else 0.0
    bid_left = float(bids[0][1]) if bids else 0.0
    while i < len(asks) and j < len(bids):
        ask, bid = float(asks[i][0]), float(bids[j][0])
        if bid * conversion * (1 - fee) ** 2 <= ask:
            break
        take = min(ask_left, bid_left)
        size, worst_ask, worst_bid = size + take, ask, bid
        ask_left, bid_left = ask_left - take, bid_left - take
        if ask_left <= 1e-15:
            i += 1
            ask_left = float(asks[i][1]) if i < len(asks) else 0.0
        if bid_left <= 1e-15:
            j += 1
            bid_left = float(bids[j][1]) if j < len(bids) else 0.0
    return size, worst_ask, worst_bid


def plan_legs(
    trade: str,
    opportunity: CrossOpportunity,
    rules: dict[str, MarketRules],
    taker_fee: float,
    held: tuple[float, float],
    books: tuple[list[list[float]], list[list[float]]],
) -> tuple[Leg, Leg]:
    """The buy and sell legs of `opportunity`: as much as the buy venue's asks and the
    sell venue's bids (`books`) trade at a profit, at most the notional and what each
    venue `held` (quote on the buy venue, the asset on the sell venue), as IOC limits at
    the worst levels used. ExchangeRejected, naming the venue and what is missing, when
    either side cannot make a tradable order."""
    o = opportunity
    quote_held, base_held = held
    depth, worst_ask, worst_bid = depth_size(*books, taker_fee, o.conversion)
    most = min(o.quote_needed, quote_held) / (worst_ask or o.buy_price)
    amount = rules[o.buy_venue].round_amount(min(most, depth, base_held / (1 - taker_fee)))
    sell_amount = rules[o.sell_venue].round_amount(amount * (1 - taker_fee))
    if amount <= 0 or sell_amount <= 0:
        missing = (
            f"inventory of {o.asset} on {o.sell_venue}" if base_held * o.buy_price < 1
            else f"inventory of quote on {o.buy_venue}" if quote_held < 1
            else "depth at a profit on the books"
        )  # fmt: skip
        raise ExchangeRejected(
            f"cross {o.buy_venue}:{o.buy_symbol} > {o.sell_venue}:{o.sell_symbol}: no "
            f"tradable size: {missing} (quote held {quote_held:g}, {o.asset} held "
            f"{base_held:g}); fund the venue or lower arbitrage.max_cycle_notional"
        )
    return (
        Leg(o.buy_venue, o.buy_symbol, "buy", amount, worst_ask, leg_client_id(trade, 0), 0),
        Leg(
            o.sell_venue, o.sell_symbol, "sell", sell_amount, worst_bid,
            leg_client_id(trade, 1), 1,
        ),
    )  # fmt: skip


@dataclass
class Dispatcher:
    """Sends legs through their venue's broker, each on its own thread of a pool
    started once (`send_both`), or one at a time (`send`).

    `before_send` is called with each leg `send` is about to send (the exits), so the
    trader writes it down first; `send_both`'s legs are written by the trader together
    with their trade, before it calls."""

    brokers: dict[str, Broker]
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(2, "cross-leg"))
    before_send: Callable[[Leg], None] | None = None

    def send(self, leg: Leg, now_ms: int) -> Sent:
        """Send a leg whose id was made for this send (never sent before), after
        `before_send` (whose errors, e.g. a lost lease, stop it)."""
        if self.before_send is not None:
            self.before_send(leg)
        return self._send(leg, now_ms)

    def _send(self, leg: Leg, now_ms: int) -> Sent:
        """Hand a leg to its broker; a venue that neither answered nor could be asked
        afterwards (down) leaves it pending, to be looked up again."""
        handed = time.perf_counter()
        broker = self.brokers[leg.venue]
        try:
            execution = broker.execute(
                leg.symbol, leg.side, leg.amount, leg.client_id, now_ms, leg.price, fresh=True
            )
        except TemporaryExchangeError as error:
            execution = Execution("pending", 0.0, 0.0, error=str(error))
        return Sent(leg, execution, handed)

    def settle(self, sent: Sent, until: float) -> Sent:
        """A leg whose state is not final yet (`pending`: the venue did not answer;
        `open`/`partial`: not matched yet) looked up by its id until it is final or the
        monotonic time `until`; one still open then is canceled (what filled counts),
        one never found stays pending."""
        broker = self.brokers[sent.leg.venue]
        while sent.execution.status not in FINAL and time.monotonic() < until:
            try:
                found = broker.lookup(sent.leg.symbol, sent.leg.client_id)
            except CryptobotsError:
                found = None
            if found is not None:
                sent = Sent(sent.leg, found, sent.handed_at)
                if found.status in FINAL:
                    return sent
            time.sleep(0.05)
        if sent.execution.status in ("open", "partial"):
            try:
                final = broker.cancel(sent.leg.symbol, sent.leg.client_id)
            except CryptobotsError:
                final = None
            if final is not None:
                sent = Sent(sent.leg, final, sent.handed_at)
        return sent

    def send_both(self, legs: tuple[Leg, Leg], now_ms: int) -> tuple[Sent, Sent]:
        """Both legs at once; each comes back with what its venue said."""
        futures: list[Future[Sent]] = [self.pool.submit(self._send, leg, now_ms) for leg in legs]
        first, second = (f.result() for f in futures)
        return first, second

    def close(self) -> None:
        self.pool.shutdown(wait=True)
