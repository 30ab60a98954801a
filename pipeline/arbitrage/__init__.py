"""Arbitrage on one exchange: cycles of markets that pay after fees, sized against depth.

- `graph`: the exchange as a graph of currencies (two weighted edges per market), every
  3-cycle through the home currency as index arrays re-evaluated on each book update
  (`Triangles`), and a Bellman-Ford search for cycles up to `max_length` legs
  (`CycleSearch`).
- `sizing`: the most profitable size of a cycle, walking every leg's order-book levels,
  rounded to the market's amount step and above its minimum amount and cost
  (`size_cycle`).

Pure numpy and the standard library: no ccxt, Airflow or TensorFlow import.
"""

from pipeline.arbitrage.graph import (
    ArbitrageConfig,
    Cycle,
    CycleSearch,
    ExchangeGraph,
    Leg,
    MarketSpec,
    Triangles,
)
from pipeline.arbitrage.sizing import AmountRules, CycleSize, LegFill, size_cycle

__all__ = [
    "AmountRules",
    "ArbitrageConfig",
    "Cycle",
    "CycleSearch",
    "CycleSize",
    "ExchangeGraph",
    "Leg",
    "LegFill",
    "MarketSpec",
    "Triangles",
    "size_cycle",
]
