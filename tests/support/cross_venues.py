"""Two simulated venues quoting BTC/USDC (binanceus and kraken, speaking Binance's API, or
kraken speaking Kraken's own), each with its ccxt client and live broker, for the
cross-exchange tests."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import httpx
from sqlalchemy.engine import Engine

from pipeline.arbitrage.cross import VenueQuote
from pipeline.exchanges.client import ExchangeClient
from pipeline.exchanges.factory import Credentials, create_ccxt
from pipeline.exchanges.simulator.app import Running
from pipeline.settings import ExchangeConfig
from serving.kernel.broker import ExchangeBroker
from serving.kernel.market_rules import MarketRules
from tests.support.exchange import fast_retry

KEY = "cross-key"
SECRET = base64.b64encode(b"cross-secret".ljust(64, b".")).decode()  # Kraken wants base64
SYMBOL = "BTC/USDC"
INVENTORY = (("USDC", 10_000.0), ("BTC", 0.2))
NAMES = ("binanceus", "kraken")


class Venue:
    """One simulated venue: its simulator, its ccxt client and its broker."""

    def __init__(self, name: str, sim: Running, dialect: str = "binance") -> None:
        self.name, self.sim, self.dialect = name, sim, dialect
        config = ExchangeConfig(ccxt_id=dialect, url=sim.url, rate_limit_ms=10)
        client = create_ccxt(name, config, Credentials(KEY, SECRET), timeout_ms=3000)
        self.exchange = ExchangeClient(name, client, fast_retry())
        self.exchange.load_markets()
        self.broker = ExchangeBroker(self.exchange)
        self.rules = MarketRules.from_ccxt(self.exchange.market(SYMBOL))

    def book(self) -> dict[str, Any]:
        return self.exchange.client.fetch_order_book(SYMBOL, 20)

    def quote(self) -> VenueQuote:
        book = self.book()
        return VenueQuote(self.name, SYMBOL, book["bids"][0][0], book["asks"][0][0])

    def held(self) -> dict[str, float]:
        return dict(self.sim.exchange.accounts.account(KEY).balances)

    def sent(self) -> list[str]:
        """Client order ids of every order this venue received."""
        return [o.client_order_id for o in self.sim.exchange.accounts.account(KEY).orders]

    def filled(self) -> dict[str, float]:
        """Base filled per client order id, as this venue says."""
        orders = self.sim.exchange.accounts.account(KEY).orders
        return {o.client_order_id: o.executed_qty for o in orders}

    def plant(self, bps: float, seconds: float = 120.0) -> None:
        body = {"symbol": "BTCUSDC", "bps": bps, "seconds": seconds}
        assert httpx.post(f"{self.sim.url}/sim/plant", json=body).status_code == 200

    def clear_plants(self) -> None:
        assert httpx.delete(f"{self.sim.url}/sim/plant").status_code == 200

    def fault(self, kind: str, **extra: object) -> None:
        body = {"symbol": "BTCUSDC", "kind": kind, **extra}
        assert httpx.post(f"{self.sim.url}/sim/leg-fault", json=body).status_code == 200


@contextmanager
def two_venues(
    simulator: Callable[..., AbstractContextManager[Running]],
    inventory: dict[str, tuple[tuple[str, float], ...]] | None = None,
    dialects: tuple[str, str] = ("binance", "binance"),
    **options: object,
) -> Iterator[list[Venue]]:
    """binanceus and kraken simulators with `inventory` per venue (default INVENTORY),
    speaking `dialects`."""
    held = inventory or {}
    common = {"shift_to_now": True, "api_keys": ((KEY, SECRET),), **options}
    with (
        simulator(
            exchange=NAMES[0], dialect=dialects[0],
            initial_balances=held.get(NAMES[0], INVENTORY), **common,
        ) as first,
        simulator(
            exchange=NAMES[1], dialect=dialects[1],
            initial_balances=held.get(NAMES[1], INVENTORY), **common,
        ) as second,
    ):  # fmt: skip
        yield [Venue(NAMES[0], first, dialects[0]), Venue(NAMES[1], second, dialects[1])]


def cross_env(engine: Engine, venues: list[Venue]) -> dict[str, str]:
    """This process's environment without its CRYPTOBOTS_* settings, plus a live cross
    trader's on the venues' BTC/USDC with their keys and a fast loop."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOBOTS_")}
    env |= {
        "CRYPTOBOTS_DB_URL": engine.url.render_as_string(hide_password=False),
        "CRYPTOBOTS_TRADING_MODE": "live",
        "CRYPTOBOTS_MARKETS": f"{venues[0].name}:{SYMBOL}:1h",
        "CRYPTOBOTS_ARBITRAGE__CROSS_MARKETS": json.dumps(
            [f"{v.name}:{SYMBOL}:1m" for v in venues]
        ),
        "CRYPTOBOTS_SERVING__PORT": "0",
        "SIMKEYS_API_KEY": KEY,
        "SIMKEYS_SECRET": SECRET,
    }
    for venue in venues:
        prefix = f"CRYPTOBOTS_EXCHANGES__{venue.name.upper()}__"
        env |= {
            f"{prefix}URL": venue.sim.url,
            f"{prefix}CCXT_ID": venue.dialect,
            f"{prefix}RATE_LIMIT_MS": "10",
            f"{prefix}CREDENTIALS": "env:SIMKEYS",
        }
    return env
