"""The model trader's Prometheus metrics, in a registry of its own (one per trader)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class Metrics:
    """Counters, gauges and the decision latency histogram of one trader."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.decisions = Counter(
            "cryptobots_decisions", "decisions taken", ["market", "outcome"], registry=r
        )
        self.decision_latency = Histogram(
            "cryptobots_decision_latency_seconds",
            "closed candle available -> order handed to the broker",
            ["market"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.orders = Counter(
            "cryptobots_orders", "orders by status", ["market", "status"], registry=r
        )
        self.fills = Counter("cryptobots_fills", "fills recorded", ["market"], registry=r)
        self.equity = Gauge("cryptobots_equity", "equity in quote", ["market"], registry=r)
        self.position = Gauge("cryptobots_position", "base held", ["market"], registry=r)
        self.model_version = Gauge(
            "cryptobots_model_version", "champion version serving", ["model"], registry=r
        )
        self.models_refused = Counter(
            "cryptobots_models_refused", "champion artifacts refused", ["model"], registry=r
        )
        self.risk_state = Gauge(
            "cryptobots_risk_state", "0 ACTIVE, 1 REDUCING, 2 HALTED", ["market"], registry=r
        )
        self.exchange_errors = Counter(
            "cryptobots_exchange_errors", "failed exchange calls", ["exchange"], registry=r
        )
        self.db_up = Gauge("cryptobots_db_up", "1 when the state database answers", registry=r)
        self.active = Gauge(
            "cryptobots_trader_active",
            "1 while this trader holds its markets' lease and trades, 0 on standby",
            registry=r,
        )
        self.watch_drawdown = Gauge(
            "cryptobots_watch_drawdown",
            "drawdown since the champion took over",
            ["market"],
            registry=r,
        )
        self.watch_limit = Gauge(
            "cryptobots_watch_limit",
            "drawdown the champion's backtest makes usual over as many decisions",
            ["market"],
            registry=r,
        )
        self.watch_breaches = Counter(
            "cryptobots_watch_breaches", "champion watch breaches", ["market"], registry=r
        )
        self.stale = Counter(
            "cryptobots_stale_candles", "candles too stale to decide on", ["market"], registry=r
        )
