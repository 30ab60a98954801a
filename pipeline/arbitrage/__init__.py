"""Arbitrage: cycles inside one exchange and spreads across venues that pay after fees.

- `graph`: the exchange as a graph of currencies (two weighted edges per market), every
  3-cycle through the home currency as index arrays re-evaluated on each book update
  (`Triangles`), and a Bellman-Ford search for cycles up to `max_length` legs
  (`CycleSearch`).
- `sizing`: the most profitable size of a cycle, walking every leg's order-book levels,
  rounded to the market's amount step and above its minimum amount and cost
  (`size_cycle`).
- `cross`: the net spread of buying an asset on one venue and selling it on another after
  both taker fees, both rebalancing withdrawals and the quote conversion, with the
  inventory it needs on each side (`cross_opportunities`).
- The study (each imported on its own): the same figures over stored candles, for the
  `arbitrage study` command. `study_config` (groups, costs, caveats), `study_stats`
  (aligned observations, distributions, runs), `study_edges` (edges, spreads, sizes and
  profits per group), `study_candles` (loading from the database), `study_ingest` (recorded
  files through the simulator), `study_plot` (the PNG), `study_text` (the text report), and
  `study`, which runs them. `report`: the `arbitrage_report` DAG's task; `page`: its page.

Pure numpy and the standard library: no ccxt, Airflow or TensorFlow import.
"""

from pipeline.arbitrage.cross import (
    CrossCosts,
    CrossOpportunity,
    Transfer,
    VenueQuote,
    cross_opportunities,
    net_spread_bps,
)
from pipeline.arbitrage.graph import (
    ArbitrageConfig,
    Cycle,
    CycleSearch,
    ExchangeGraph,
    Leg,
    MarketSpec,
    Triangles,
)
from pipeline.arbitrage.sizing import AmountRules, CycleSize, LegFill, leg_receives, size_cycle

__all__ = [
    "AmountRules",
    "ArbitrageConfig",
    "CrossCosts",
    "CrossOpportunity",
    "Cycle",
    "CycleSearch",
    "CycleSize",
    "ExchangeGraph",
    "Leg",
    "LegFill",
    "MarketSpec",
    "Transfer",
    "Triangles",
    "VenueQuote",
    "cross_opportunities",
    "leg_receives",
    "net_spread_bps",
    "size_cycle",
]
