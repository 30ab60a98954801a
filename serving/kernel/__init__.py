"""What both strategies share, and nothing of either.

The lease (one active trader per market), the brokers (paper and exchange), fills and
executions, database errors, the exchange's balances, market rules, risk states and
their recording, and the HTTP side. `serving.model` and `serving.arbitrage` import
from here, never from each other; only the entry point (`serving.cli`, `serving.startup`)
sees both.
"""
