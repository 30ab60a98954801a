"""The simulator's accounts, one per API key: who may act on which, and where they persist.

Requests are authenticated like Binance's: the `X-MBX-APIKEY` header names the
key, `signature` is the HMAC-SHA256 (hex) of the query string (GET, DELETE) or the
form body (POST) up to `&signature=`, and `timestamp` must lie within `recvWindow`
of the simulator's clock. With a state file, every change is written atomically and
reloaded on start.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from dataclasses import asdict
from pathlib import Path
from urllib.parse import parse_qsl

from pipeline.exchanges.simulator.errors import BinanceError
from pipeline.exchanges.simulator.records import (
    DEFAULT_BALANCES,
    Account,
    InterestCharge,
    Liquidation,
    Loan,
    MarginTerms,
    MarginWallet,
    Order,
    Trade,
    Wallet,
)

# Binance's answer to a margin call on an account that has no margin account
NO_MARGIN = (400, -3003, "Margin account does not exist.")


class AccountStore:
    """The accounts by API key, their lock and their state file: what every part of
    `Accounts` works on."""

    def __init__(
        self,
        keys: dict[str, str],
        state_file: Path | None = None,
        initial: dict[str, float] | None = None,
        margin: MarginTerms | None = None,
    ) -> None:
        self.keys = dict(keys)
        self.margin_terms = margin  # None: no key has a margin account
        self.state_file = state_file
        self.initial = dict(initial or DEFAULT_BALANCES)
        self.accounts: dict[str, Account] = {}
        self.next_id = 1
        self.lock = threading.RLock()
        if state_file is not None and state_file.exists():
            self._load(state_file)

    def authenticate(self, api_key: str | None, payload: str, now: int) -> dict[str, str]:
        """The signed parameters of a request, or BinanceError as Binance would answer."""
        if not api_key or api_key not in self.keys:
            raise BinanceError(401, -2015, "Invalid API-key, IP, or permissions for action.")
        unsigned, marker, signature = payload.rpartition("&signature=")
        if not marker:
            unsigned, signature = payload, ""
        expected = hmac.new(self.keys[api_key].encode(), unsigned.encode(), hashlib.sha256)
        if not hmac.compare_digest(expected.hexdigest(), signature):
            raise BinanceError(400, -1022, "Signature for this request is not valid.")
        params = dict(parse_qsl(unsigned, keep_blank_values=True))
        try:
            timestamp = int(params["timestamp"])
            window = int(params.get("recvWindow", 5000))
        except (KeyError, ValueError):
            raise BinanceError(
                400, -1102, "Mandatory parameter 'timestamp' was not sent."
            ) from None
        if not (timestamp - 1000 <= now and now - timestamp <= window):
            raise BinanceError(
                400, -1021, "Timestamp for this request is outside of the recvWindow."
            )
        return params

    def account(self, api_key: str) -> Account:
        with self.lock:
            if api_key not in self.accounts:
                self.accounts[api_key] = Account(balances=dict(self.initial))
            return self.accounts[api_key]

    def wallet(self, api_key: str, kind: str = "spot") -> Wallet:
        """The spot wallet, or (`kind` "margin") the cross-margin one, opened on first use."""
        if kind == "spot":
            return self.account(api_key)
        return self.margin_wallet(api_key)

    def margin_wallet(self, api_key: str) -> MarginWallet:
        """The key's cross-margin wallet; BinanceError -3003 when margin is not enabled."""
        if self.margin_terms is None:
            raise BinanceError(*NO_MARGIN)
        with self.lock:
            account = self.account(api_key)
            if account.margin is None:
                account.margin = MarginWallet()
            return account.margin

    def find(self, api_key: str, params: dict[str, str], wallet: str = "spot") -> Order:
        with self.lock:
            for order in self.wallet(api_key, wallet).orders:
                if order.symbol != params.get("symbol"):
                    continue
                if str(order.order_id) == params.get("orderId") or (
                    order.client_order_id == params.get("origClientOrderId")
                ):
                    return order
        raise BinanceError(400, -2013, "Order does not exist.")

    def _save(self) -> None:
        if self.state_file is None:
            return
        state = {
            "next_id": self.next_id,
            "accounts": {key: asdict(account) for key, account in self.accounts.items()},
        }
        temporary = self.state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(state))
        temporary.replace(self.state_file)

    def _load(self, path: Path) -> None:
        state = json.loads(path.read_text())
        self.next_id = int(state["next_id"])
        for key, data in state["accounts"].items():
            margin = data.get("margin")
            self.accounts[key] = Account(
                balances=data["balances"],
                locked=data["locked"],
                orders=[Order(**o) for o in data["orders"]],
                trades=[Trade(**t) for t in data["trades"]],
                margin=None if margin is None else _margin_wallet(margin),
            )


def _margin_wallet(data: dict) -> MarginWallet:
    return MarginWallet(
        balances=data["balances"],
        locked=data["locked"],
        orders=[Order(**o) for o in data["orders"]],
        trades=[Trade(**t) for t in data["trades"]],
        borrowed=data["borrowed"],
        interest=data["interest"],
        loans=[Loan(**row) for row in data["loans"]],
        charges=[InterestCharge(**row) for row in data["charges"]],
        liquidations=[Liquidation(**row) for row in data["liquidations"]],
        charged_to=data["charged_to"],
    )
