"""The arbitrage trader's Prometheus metrics, in a registry of its own."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class ArbitrageMetrics:
    """The arbitrage trader's Prometheus metrics, in a registry of its own."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.opportunities = Counter(
            "cryptobots_arbitrage_opportunities",
            "cycles above the threshold, by what became of them",
            ["outcome"],
            registry=r,
        )
        self.legs = Counter(
            "cryptobots_arbitrage_legs",
            "legs and unwinds by status",
            ["kind", "status"],
            registry=r,
        )
        self.leg_failures = Counter(
            "cryptobots_arbitrage_leg_failures", "legs that failed and were unwound", registry=r
        )
        self.realized = Gauge(
            "cryptobots_arbitrage_realized_profit", "realized profit since start, home", registry=r
        )
        self.detection = Histogram(
            "cryptobots_arbitrage_detection_seconds",
            "books received -> first leg handed to the broker",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
            registry=r,
        )
        self.dust = Gauge(
            "cryptobots_arbitrage_dust",
            "what finished cycles left in each currency other than home, until swept",
            ["currency"],
            registry=r,
        )
        self.risk_state = Gauge(
            "cryptobots_arbitrage_risk_state", "0 ACTIVE, 1 REDUCING, 2 HALTED", registry=r
        )
        self.exchange_errors = Counter(
            "cryptobots_exchange_errors", "failed exchange calls", ["exchange"], registry=r
        )
        self.db_up = Gauge("cryptobots_db_up", "1 when the state database answers", registry=r)
        self.active = Gauge(
            "cryptobots_trader_active", "1 while this trader holds its markets' lease", registry=r
        )
