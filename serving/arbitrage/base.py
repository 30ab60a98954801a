"""What the parts of the arbitrage trader share: its fields (`__init__`, and what
`start` loads from the exchange) and the plumbing every part calls: the books, a leg's
settlement, the gate's transitions, the clock and the lease's fence.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.engine import Engine

from pipeline.arbitrage import CycleSearch, ExchangeGraph, Triangles
from pipeline.errors import CryptobotsError
from pipeline.exchanges.client import ExchangeClient
from pipeline.settings import Settings
from serving.arbitrage import dust, store
from serving.arbitrage.metrics import ArbitrageMetrics
from serving.arbitrage.risk import CycleGate
from serving.kernel.broker import Broker
from serving.kernel.execution import Execution
from serving.kernel.lease import Lease, LeaseLost, Role
from serving.kernel.leg_trader import LegTraderParts
from serving.kernel.market_rules import MarketRules


class ArbitrageBase(LegTraderParts):
    """The arbitrage trader's fields and shared plumbing (see `ArbitrageTrader`)."""

    # loaded by `start` from the exchange's markets
    graph: ExchangeGraph
    fees: dict[str, float]  # taker fee per symbol
    triangles: Triangles
    search: CycleSearch | None  # past 3 legs
    rules: dict[str, MarketRules]

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        exchange: ExchangeClient,
        broker: Broker,
        *,
        metrics: ArbitrageMetrics | None = None,
        clock: Callable[[], float] = time.time,
        lease: Lease | None = None,
    ) -> None:
        self.settings = settings
        self.config = settings.arbitrage
        self.engine = engine
        self.exchange = exchange
        self.broker = broker
        self.clock = clock
        self.venue = self.config.exchange
        self.account = "live" if broker.live else "paper"
        self.metrics = metrics or ArbitrageMetrics()
        self.risk = CycleGate(self.config, f"arbitrage:{self.venue}")
        self.dust = dust.DustLedger(self.config.home, self.metrics.dust)
        self.markets = tuple(f"{self.venue}:{symbol}" for symbol in self.config.symbols)
        self.lock = threading.RLock()
        self.started = False
        self.reconciled = False
        self.last_books_ms: int | None = None
        self.last_error: str | None = None
        self.realized_total = 0.0
        self.balances: dict[str, float] = {}
        self.tops: dict[str, tuple[float | None, float | None]] = {}
        self.latency: dict[str, float] = {}  # seconds, books seen -> first leg handed over
        self.acted_on: tuple[Any, ...] | None = None  # paper: the cycle and books last traded
        self.lease = lease  # None: trades without one (a library user, a test)
        self.role = Role(lease, self.metrics.active)

    def _fence(self) -> store.Fence | None:
        if self.lease is None:
            return None
        return (self.lease.account, *self.lease.fence())

    def _lease_lost(self, error: LeaseLost) -> str:
        self.role.lost(error)
        self.reconciled = False
        return "standby"

    def _settle(self, leg: Mapping[str, Any], execution: Execution) -> tuple[float, float]:
        paper = None if self.broker.live else (self.account, self.venue)
        spent, received = store.settle_leg(self.engine, leg, execution, paper=paper)
        status = (
            "partial" if execution.status == "expired" and execution.filled else execution.status
        )
        self.metrics.legs.labels(leg["kind"], status).inc()
        if paper is not None:
            self.balances[leg["source"]] = self.balances.get(leg["source"], 0.0) - spent
            self.balances[leg["target"]] = self.balances.get(leg["target"], 0.0) + received
        return spent, received

    def _observe(self, books: Mapping[str, Any]) -> None:
        """Books into the graph's weights and the top of each book."""
        for symbol, book in books.items():
            self.graph.update_book(symbol, book)
            bids, asks = book.get("bids"), book.get("asks")
            self.tops[symbol] = (bids[0][0] if bids else None, asks[0][0] if asks else None)

    def _mid(self, symbol: str) -> float | None:
        bid, ask = self.tops.get(symbol, (None, None))
        return (bid + ask) / 2 if bid and ask else None

    def _books(self, symbols: Any) -> dict[str, Any]:
        depth = self.config.book_depth
        client = self.exchange.client
        try:
            books = {
                symbol: self.exchange.call(
                    f"{symbol} order book",
                    lambda symbol=symbol: client.fetch_order_book(symbol, depth),
                    kind="depth",
                )
                for symbol in symbols
            }
        except CryptobotsError as error:
            self.metrics.exchange_errors.labels(self.venue).inc()
            self.last_error = str(error)
            raise
        self.last_error = None
        return books
