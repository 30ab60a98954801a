"""Live shorts on the exchange's cross-margin account (`serving.margin`).

`MarginBroker` sends the trader's orders as cross-margin orders. A sell that needs more
of the base asset than the margin wallet holds borrows the shortfall first; a buy repays
the loan with what it buys (Binance's AUTO_REPAY, on the exchange in the order itself).
Borrowing has no client id to look up, so crash safety comes from state, not ids:
`settle_loans` repays every loan the wallet could repay from its own free balance (a
borrow whose sell never went out, a buy-back a crash kept from repaying), and runs
whenever the trader reconciles. Balances are read net of loans and interest
(`margin_totals`): a short is a negative base.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.errors import ExchangeRejected, TemporaryExchangeError
from pipeline.exchanges.client import ExchangeClient
from serving.kernel.broker import ExchangeBroker
from serving.kernel.execution import Execution

log = logging.getLogger("serving.margin")

CROSS = {"marginMode": "cross"}
DUST = 1e-12


class MarginBroker(ExchangeBroker):
    """ExchangeBroker over the cross-margin wallet: borrow before a short sell, repay on
    the buy back."""

    margin = True

    def __init__(self, exchange: ExchangeClient, name: str) -> None:
        super().__init__(exchange)
        self.name = name

    def order_params(self, side: str) -> dict[str, Any]:
        return CROSS | ({"sideEffectType": "AUTO_REPAY"} if side == "buy" else {})

    def lookup_params(self) -> dict[str, Any]:
        return dict(CROSS)

    def execute(
        self,
        symbol: str,
        side: str,
        amount: float,
        client_id: str,
        now_ms: int,
        price: float | None = None,
        fresh: bool = False,
    ) -> Execution:
        """ExchangeBroker.execute; a sell that did not fill whole (rejected, expired)
        leaves what it borrowed idle, so the wallet's loans are settled at once."""
        execution = super().execute(symbol, side, amount, client_id, now_ms, price, fresh)
        if side == "sell" and execution.status in ("rejected", "expired", "canceled"):
            self.settle_loans()
        return execution

    def before_send(self, symbol: str, side: str, amount: float) -> Execution | None:
        """Borrow what a sell of `amount` lacks; a refusal (borrow limit, margin not
        enabled, an empty lending pool) as a rejected Execution naming what to change."""
        if side != "sell":
            return None
        base = self.exchange.market(symbol)["base"]
        wallet = self.wallet()
        shortfall = amount - wallet.get(base, {}).get("free", 0.0)
        if shortfall <= DUST:
            return None
        try:
            self.exchange.call(
                f"{self.name}: borrow {shortfall} {base}",
                lambda: self.exchange.client.borrow_cross_margin(base, shortfall),
                kind="order",
                retry=False,
            )
        except ExchangeRejected as error:
            return Execution(
                "rejected",
                0.0,
                0.0,
                error=f"{self.name}:{symbol}: borrowing {shortfall:.8f} {base} for a short was "
                f"refused ({error}); lower serving.risk.max_leverage or set serving.margin=false",
            )
        except TemporaryExchangeError:
            self.settle_loans()  # whether the borrow landed or not, no loan is left idle
            raise
        return None

    def wallet(self) -> dict[str, dict[str, float]]:
        """The margin wallet: per asset its free, used and debt (borrowed + interest)."""

        def fetch() -> dict[str, Any]:
            return self.exchange.client.fetch_balance({"type": "margin"})

        balance = self.exchange.call(f"{self.name} margin balances", fetch)
        assets = {a for part in ("free", "used", "debt") for a in balance.get(part) or {}}
        return {
            asset: {
                part: float((balance.get(part) or {}).get(asset) or 0.0)
                for part in ("free", "used", "debt")
            }
            for asset in assets
        }

    def interest_since(self, asset: str, since: int | None) -> list[tuple[int, float]]:
        """(time, amount) of the interest charged on `asset`'s loan after `since` (ms;
        None: all the exchange lists), oldest first."""
        start = None if since is None else since + 1
        rows = self.exchange.call(
            f"{self.name} {asset} interest",
            lambda: self.exchange.client.fetch_borrow_interest(asset, None, start, 100),
        )
        return sorted((int(r["timestamp"]), float(r["interest"] or 0.0)) for r in rows)

    def margin_level(self) -> float:
        """The account's margin level: asset value over what it owes (999: owes nothing)."""
        balance = self.exchange.call(
            f"{self.name} margin level",
            lambda: self.exchange.client.fetch_balance({"type": "margin"}),
        )
        return float(balance["info"]["marginLevel"])

    def settle_loans(self) -> dict[str, float]:
        """Repay from the wallet's free balance every loan it can: what each asset repaid.

        A wallet that holds an asset it also owes is never what the trader wants (a sell
        borrows only what it lacks; a buy back repays at once), so this undoes a borrow
        whose sell was never sent and finishes a repay a crash interrupted."""
        repaid = {}
        for asset, parts in self.wallet().items():
            amount = min(parts["free"], parts["debt"])
            if amount <= DUST:
                continue
            self.exchange.call(
                f"{self.name}: repay {amount} {asset}",
                lambda asset=asset, amount=amount: self.exchange.client.repay_cross_margin(
                    asset, amount
                ),
                kind="order",
                retry=False,
            )
            log.warning("%s: repaid %s %s of an idle loan", self.name, amount, asset)
            repaid[asset] = amount
        return repaid

    def check_enabled(self) -> None:
        """Refuse to start on an account without cross margin, naming the fix."""
        try:
            self.wallet()
        except ExchangeRejected as error:
            raise ExchangeRejected(
                f"{self.name}: serving.margin is on but the exchange refused the margin "
                f"account ({error}): enable cross margin on the exchange account or set "
                "CRYPTOBOTS_SERVING__MARGIN=false"
            ) from error


def margin_totals(wallet: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each asset's net holding (free + used - debt): negative for a short."""
    return {a: p["free"] + p["used"] - p["debt"] for a, p in wallet.items()}
