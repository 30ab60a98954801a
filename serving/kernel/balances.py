"""The exchange account's balances, as reconciliation and the balance checks read them."""

from __future__ import annotations

from typing import Any

from pipeline.errors import TemporaryExchangeError
from pipeline.exchanges.client import ExchangeClient


def exchange_totals(exchange: ExchangeClient, name: str) -> dict[str, float]:
    """Every asset's total the exchange account holds.

    An answer listing no asset at all is taken for a garbled one and asked again: ccxt
    parses a truncated body into an empty balance, and trusting it would zero our books.
    """

    def fetch() -> dict[str, Any]:
        balance = exchange.client.fetch_balance()
        totals = balance.get("total")
        if not isinstance(totals, dict) or not totals:
            raise TemporaryExchangeError(f"{name}: the balance answer lists no asset")
        return totals

    totals = exchange.call(f"{name} balances", fetch)
    return {asset: float(v or 0.0) for asset, v in totals.items()}
