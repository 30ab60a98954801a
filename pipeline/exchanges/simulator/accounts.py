"""The simulator's signed side: API keys, balances, orders and trades, per key.

`Accounts` is assembled from one part per job: `store` (the accounts per key, signed
request authentication, the state file), `matching` (placing, matching and cancelling
orders), `margin` (cross-margin transfers, loans, interest and liquidation) and
`queries` (what the account and order endpoints answer; `margin_queries` for margin);
`records` holds the orders, trades and loans themselves and their JSON.
"""

from __future__ import annotations

from pipeline.exchanges.simulator.margin import Margin
from pipeline.exchanges.simulator.queries import Queries


class Accounts(Margin, Queries):
    """Every API key's account; thread-safe; persisted to `state_file` when given."""
