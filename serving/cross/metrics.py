"""The cross trader's Prometheus metrics: the arbitrage trader's (trades counted as
opportunities, legs, realized profit, detection latency, gate, lease), the inventory on
each venue, the proposed rebalances and how long exposure stayed open."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Gauge, Histogram

from serving.arbitrage.metrics import ArbitrageMetrics


@dataclass
class CrossMetrics(ArbitrageMetrics):
    """ArbitrageMetrics and the cross trader's own, in one registry."""

    def __post_init__(self) -> None:
        super().__post_init__()
        r = self.registry
        self.inventory = Gauge(
            "cryptobots_cross_inventory",
            "what the account holds on each venue, per asset",
            ["venue", "asset"],
            registry=r,
        )
        self.rebalance = Gauge(
            "cryptobots_cross_rebalance_proposed",
            "amount of each asset a rebalance proposes to move (0: within the band)",
            ["asset"],
            registry=r,
        )
        self.exposure = Histogram(
            "cryptobots_cross_exposure_seconds",
            "a one-sided fill: first leg answered -> exposure closed",
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=r,
        )
