"""What the parts of the cross trader share: its fields (`__init__`, and what `start`
loads from the venues), the plumbing every part calls (the books, the clock, the
lease's fence, the gate's transitions) and what the HTTP side asks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from pipeline.arbitrage.cross import CrossCosts
from pipeline.errors import CryptobotsError
from pipeline.exchanges.client import ExchangeClient
from pipeline.settings import Settings
from serving.arbitrage import store
from serving.arbitrage.risk import CycleGate
from serving.cross import ledger
from serving.cross.exposure import Book
from serving.cross.inventory import Inventory
from serving.cross.metrics import CrossMetrics
from serving.cross.pair import Dispatcher, Leg
from serving.kernel.broker import Broker
from serving.kernel.lease import Lease, Role
from serving.kernel.leg_trader import LegTraderParts
from serving.kernel.market_rules import MarketRules


class CrossBase(LegTraderParts):
    """The cross trader's fields, plumbing and status (see `CrossTrader`)."""

    costs: CrossCosts  # loaded by `start`
    fee: float
    rules: dict[str, MarketRules]  # per venue

    def __init__(
        self,
        settings: Settings,
        engine: Any,
        exchanges: dict[str, ExchangeClient],
        brokers: dict[str, Broker],
        *,
        metrics: CrossMetrics | None = None,
        clock: Callable[[], float] = time.time,
        lease: Lease | None = None,
    ) -> None:
        self.settings, self.config = settings, settings.arbitrage
        self.engine, self.exchanges, self.brokers = engine, exchanges, brokers
        self.clock = clock
        self.symbols = {m.exchange: m.symbol for m in self.config.cross_markets}
        self.venues = tuple(self.symbols)
        self.markets = tuple(f"cross:{v}:{s}" for v, s in self.symbols.items())
        self.live = all(b.live for b in brokers.values())
        self.account = "live" if self.live else "paper"
        self.metrics = metrics or CrossMetrics()
        self.risk = CycleGate(self.config, "cross:" + "+".join(self.venues))
        self.dispatcher = Dispatcher(brokers, before_send=self._write_exit)
        self.lease = lease
        self.role = Role(lease, self.metrics.active)
        self.lock = threading.RLock()
        self.started = self.reconciled = False
        self.last_books_ms: int | None = None
        self.last_error: str | None = None
        self.realized_total = 0.0
        self.inventory = Inventory(
            assets=tuple(sorted({c for s in self.symbols.values() for c in s.split("/")})),
            band=self.config.inventory_band,
            withdrawals={a: (w.fee, w.minutes) for a, w in self.config.withdrawals.items()},
            metrics=self.metrics,
            live=self.live,
        )
        self.trading: str | None = None  # the trade whose exits `_write_exit` writes
        self.acted_on: tuple[Any, ...] | None = None  # paper: the books last traded
        self.last_refusal: str | None = None

    # -- plumbing --------------------------------------------------------------------

    def _books(self) -> dict[str, Any]:
        depth = self.config.book_depth
        books = {}
        for venue, symbol in self.symbols.items():
            exchange = self.exchanges[venue]
            try:
                books[venue] = exchange.call(
                    f"{venue} {symbol} order book",
                    lambda e=exchange, s=symbol: e.client.fetch_order_book(s, depth),
                    kind="depth",
                )
            except CryptobotsError as error:
                self.metrics.exchange_errors.labels(venue).inc()
                self.last_error = f"{venue}: {error}"
                raise
        self.last_error = None
        return books

    def _tops(self) -> dict[str, Book]:
        """(best bid, best ask) on each venue, for choosing an exit."""
        tops = {}
        for venue, book in self._books().items():
            bids, asks = book.get("bids") or [[0.0]], book.get("asks") or [[float("inf")]]
            tops[venue] = (float(bids[0][0]), float(asks[0][0]))
        return tops

    def _paper(self) -> str | None:
        return None if self.live else self.account

    def _fence(self) -> store.Fence | None:
        return None if self.lease is None else (self.lease.account, *self.lease.fence())

    # -- what serving.kernel.http asks ------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What /readyz and the logs report."""
        reasons, age = self._unready(self.config.poll_seconds, "trade")
        return {
            "ready": not reasons,
            "reasons": reasons,
            "strategy": "cross",
            "account": self.account,
            "role": self.role.name,
            "markets": list(self.markets),
            "books_age_seconds": age,
            "realized_profit": self.realized_total,
            "inventory": self.inventory.holdings,
            "rebalance": [r.as_dict() for r in self.inventory.rebalances],
            "last_refusal": self.last_refusal,
            "risk": self.risk.snapshot(self._now()),
            "lease": self.role.describe(),
        }

    def _write_exit(self, leg: Leg) -> None:
        """An exit, written (pending) before it is sent, under the lease."""
        assert self.trading is not None, "an exit outside a trade"
        store.add_leg(self.engine, ledger.leg_row(self.trading, leg), fence=self._fence())
