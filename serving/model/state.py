"""What the model trader holds between steps: per market (`MarketState`) and as a
whole (`TraderState`, the fields every part of `serving.model.trader.Trader` shares),
with the few helpers all the parts call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from pipeline.exchanges.client import ExchangeClient
from pipeline.settings import Market, Settings
from serving.kernel.broker import Broker
from serving.kernel.database import first_line
from serving.kernel.lease import Lease, LeaseLost, Role
from serving.model import decision_store, store
from serving.model.metrics import Metrics
from serving.model.policy import AliasNotifications, ModelWatch
from serving.model.risk import RiskGate
from serving.model.watch import Expectations, RunningDrawdown, Verdict

log = logging.getLogger("serving.trader")


@dataclass
class MarketState:
    """What the trader remembers about one market between steps."""

    market: Market
    model: str
    handled: int | None = None  # open time of the newest candle dealt with
    last_closed: int | None = None
    stale_warned: int | None = None  # the stale candle last warned about (once a candle)
    last_decision_ms: float | None = None  # latency of the last decision
    last_price: float | None = None
    timings: dict[str, float] = field(default_factory=dict)  # ms per stage, last decision
    position: store.Position | None = None  # cached: this process is the only writer
    rows: dict[int, list] = field(default_factory=dict)  # recent candles by open time
    watched: int | None = None  # the model version the champion watch follows
    # its equity since that version took over: running peak, deepest fall, decisions
    watch_record: RunningDrawdown = field(default_factory=RunningDrawdown)
    watch_blind: str | None = None  # why the watch cannot judge that version, if it cannot
    expectations: Expectations | None = None  # what its backtest makes usual
    verdict: Verdict | None = None  # the watch's latest judgement


@dataclass
class TraderState:
    """The model trader's fields (see `serving.model.trader.Trader`)."""

    settings: Settings
    engine: Engine
    exchanges: Mapping[str, ExchangeClient]
    brokers: Mapping[str, Broker]
    watches: Mapping[str, ModelWatch]
    risk: RiskGate
    metrics: Metrics = field(default_factory=Metrics)
    clock: Callable[[], float] = time.perf_counter
    markets: dict[str, MarketState] = field(default_factory=dict)
    db_ok: bool = True
    reconciled: bool = False
    flatten_requested: bool = False
    pending_transitions: list[Any] = field(default_factory=list)
    last_model_poll: float = float("-inf")
    exchange_now: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    notifications: AliasNotifications | None = None  # LISTEN/NOTIFY: swaps sooner
    lease: Lease | None = None  # None: trades without one (a library user, a test)
    writer: decision_store.DecisionWriter = field(init=False)
    role: Role = field(init=False)

    @property
    def account(self) -> str:
        """`live` or `paper`: the two never share rows."""
        return "live" if any(b.live for b in self.brokers.values()) else "paper"

    def _fence(self, key: str) -> tuple[str, int] | None:
        if self.lease is None:
            return None
        token = self.lease.token(key)
        if token is None:
            raise LeaseLost(f"{key}: this trader holds no lease on it")
        return (self.lease.holder, token)

    def _lease_lost(self, error: LeaseLost) -> None:
        self.role.lost(error)
        self.reconciled = False

    def _exchange_error(self, exchange: str, now: int | None, error: Any) -> None:
        self.metrics.exchange_errors.labels(exchange).inc()
        log.warning("%s: exchange call failed: %s", exchange, first_line(error))
        self.risk.on_exchange_error(exchange, now or 0, str(error))
