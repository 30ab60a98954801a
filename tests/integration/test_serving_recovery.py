"""The trader through the failures it must survive: a crash around an order, an
exchange throwing 5xx, the state database going away."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, suppress
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.db.engine import create_engine
from pipeline.exchanges.client import ExchangeClient, RetryPolicy
from pipeline.exchanges.factory import create_ccxt
from pipeline.exchanges.simulator.app import Running
from pipeline.models.registry import move_alias, register
from pipeline.settings import ExchangeConfig, Settings
from serving.kernel.broker import ExchangeBroker, PaperBroker, client_order_id
from serving.model import decision_store, store
from serving.model.metrics import Metrics
from serving.model.policy import CPU, ModelWatch
from serving.model.risk import RiskGate
from serving.model.trader import Trader
from tests.support.policies import MARKET, NAME, exported_policy
from tests.support.postgres import PG_SERVER_URL
from tests.support.trading import SPEED, rows, run_until

KEY, SECRET = "recovery-key", "recovery-secret"


def client(url: str, attempts: int = 12, credentials: tuple[str, str] | None = None):
    config = ExchangeConfig(ccxt_id="binance", url=url)
    ccxt_client = create_ccxt("binance", config, timeout_ms=2000)
    if credentials:
        ccxt_client.apiKey, ccxt_client.secret = credentials
    exchange = ExchangeClient(
        "binance", ccxt_client, RetryPolicy(attempts, 0.02, 0.2, total_seconds=30)
    )
    exchange.load_markets()
    return exchange


def champion(engine: Engine, folder: Path) -> int:
    version = register(
        engine, f"file://{folder / 'artifacts'}", exported_policy(folder, seed=3), NAME
    )
    move_alias(engine, NAME, version, seen_generation=None, who="test", reason="recovery")
    return version


def make_trader(
    settings: Settings, engine: Engine, exchange: ExchangeClient, live: bool = False
) -> Trader:
    broker = ExchangeBroker(exchange) if live else PaperBroker(exchange, settings.serving.fee_bps)
    return Trader(
        settings=settings,
        engine=engine,
        exchanges={"binance": exchange},
        brokers={"binance": broker},
        watches={NAME: ModelWatch(engine, NAME, settings.var_dir / "models", [CPU])},
        risk=RiskGate(settings.serving.risk, [MARKET]),
        metrics=Metrics(),
    )


def settings_for(url: str, sim: Running, tmp_path: Path, **serving: object) -> Settings:
    return Settings(
        var_dir=tmp_path / "var",
        db_url=url,
        exchanges={"binance": {"ccxt_id": "binance", "url": sim.url}},
        markets=[MARKET],
        serving={"loop_seconds": 0.05, "model_poll_seconds": 0.1, **serving},
    )


@pytest.fixture
def signed_sim(simulator: Callable[..., AbstractContextManager[Running]]) -> Iterator[Running]:
    with simulator(shift_to_now=True, speed=SPEED, api_keys=((KEY, SECRET),)) as sim:
        yield sim


def pending_order(trader: Trader, engine: Engine, version: int, candle_ts: int) -> dict:
    """A decision and its order as written just before sending (what a crash leaves)."""
    trader._position(trader.markets[MARKET].market, trader.exchanges["binance"])
    cid = client_order_id(NAME, version, MARKET, candle_ts, "buy")
    decision = {
        "account": "live",
        "market": MARKET,
        "candle_ts": candle_ts,
        "model_name": NAME,
        "model_version": version,
        "inputs_sha256": "0" * 64,
        "outputs": [0.0, 1.0],
        "action": 1,
        "target": 1.0,
        "price": 1.0,
        "latency_ms": 1.0,
        "outcome": "order",
        "reason": None,
        "client_order_id": cid,
    }
    order = {
        "client_order_id": cid,
        "account": "live",
        "market": MARKET,
        "side": "buy",
        "type": "market",
        "amount": 0.01,
        "price": None,
    }
    decision_store.record_decision(engine, decision, order)
    return order


@pytest.fixture
def live_trader(fresh_pg, signed_sim: Running, tmp_path: Path) -> tuple[Trader, Engine, int]:
    """A live trader on the simulator's signed endpoints, its champion registered."""
    engine = fresh_pg()
    version = champion(engine, tmp_path)
    exchange = client(signed_sim.url, credentials=(KEY, SECRET))
    settings = settings_for(engine.url.render_as_string(False), signed_sim, tmp_path)
    return make_trader(settings, engine, exchange, live=True), engine, version


def test_an_order_that_reached_the_exchange_before_a_crash_is_applied_not_sent_again(
    live_trader: tuple[Trader, Engine, int], signed_sim: Running
) -> None:
    trader, engine, version = live_trader
    exchange = trader.exchanges["binance"]
    order = pending_order(trader, engine, version, candle_ts=0)
    exchange.client.create_order(
        "BTC/USDT", "market", "buy", 0.01, None, {"newClientOrderId": order["client_order_id"]}
    )
    assert trader.reconcile() == 1
    [(status, filled)] = rows(engine, "SELECT status, filled FROM orders")
    assert (status, filled) == ("filled", pytest.approx(0.01))
    account = signed_sim.exchange.accounts.account(KEY)
    assert [o.client_order_id for o in account.orders] == [order["client_order_id"]]
    position = store.get_position(engine, "live", MARKET)
    assert position.base == pytest.approx(account.balances["BTC"], abs=1e-12)
    assert position.quote == pytest.approx(account.balances["USDT"], abs=1e-9)


def test_an_order_that_never_reached_the_exchange_is_expired_not_sent_late(
    live_trader: tuple[Trader, Engine, int], signed_sim: Running
) -> None:
    trader, engine, version = live_trader
    pending_order(trader, engine, version, candle_ts=0)
    with engine.begin() as conn:  # written a minute ago: past any recvWindow
        conn.execute(sa.text("UPDATE orders SET created_at = created_at - interval '60 seconds'"))
    assert trader.reconcile() == 1
    [(status, error)] = rows(engine, "SELECT status, error FROM orders")
    assert status == "expired"
    assert "never reached the exchange" in error
    assert signed_sim.exchange.accounts.account(KEY).orders == []


def test_an_order_not_found_yet_is_not_expired_while_it_could_still_arrive(
    live_trader: tuple[Trader, Engine, int], signed_sim: Running
) -> None:
    trader, engine, version = live_trader
    order = pending_order(trader, engine, version, candle_ts=0)
    assert trader.reconcile() == 0
    assert not trader.reconciled
    assert trader.step() == 0  # nothing is decided or sent before it is settled
    assert rows(engine, "SELECT status FROM orders") == [("pending",)]
    trader.exchanges["binance"].client.create_order(  # the delayed request arrives
        "BTC/USDT", "market", "buy", 0.01, None, {"newClientOrderId": order["client_order_id"]}
    )
    assert trader.reconcile() == 1
    assert rows(engine, "SELECT status FROM orders") == [("filled",)]
    assert trader.reconciled


def test_an_order_still_open_is_canceled_on_exit_when_asked(
    live_trader: tuple[Trader, Engine, int], signed_sim: Running
) -> None:
    trader, engine, _ = live_trader
    trader.settings = trader.settings.model_copy(
        update={"serving": trader.settings.serving.model_copy(update={"cancel_on_exit": True})}
    )
    trader.reconcile()
    exchange = trader.exchanges["binance"]
    bid = exchange.client.fetch_order_book("BTC/USDT")["bids"][0][0]
    order = {"client_order_id": "cb-resting-1", "account": "live", "market": MARKET}
    store.record_order(engine, {**order, "side": "buy", "type": "limit", "amount": 0.01})
    exchange.client.create_order(
        "BTC/USDT", "limit", "buy", 0.01, bid * 0.5, {"newClientOrderId": "cb-resting-1"}
    )
    stop = threading.Event()
    stop.set()  # the loop ends at once: only the exit path runs
    trader.run(stop)
    [(status,)] = rows(engine, "SELECT status FROM orders")
    assert status == "canceled"
    [resting] = signed_sim.exchange.accounts.account(KEY).orders
    assert resting.status == "CANCELED"


def test_live_markets_sharing_a_quote_asset_each_get_a_share_not_the_whole(
    fresh_pg, signed_sim: Running, tmp_path: Path
) -> None:
    engine = fresh_pg()
    eth = "binance:ETH/USDT:1h"
    exchange = client(signed_sim.url, credentials=(KEY, SECRET))
    url = engine.url.render_as_string(False)
    settings = settings_for(url, signed_sim, tmp_path, markets=[MARKET, eth])
    trader = make_trader(settings, engine, exchange, live=True)
    trader.reconcile()
    quotes = {m: store.get_position(engine, "live", m).quote for m in (MARKET, eth)}
    assert quotes == {MARKET: pytest.approx(5_000.0), eth: pytest.approx(5_000.0)}

    order = {"client_order_id": "cb-share-1", "account": "live", "market": MARKET}
    store.record_order(engine, {**order, "side": "buy", "type": "market", "amount": 0.01})
    answer = exchange.client.create_order(
        "BTC/USDT", "market", "buy", 0.01, None, {"newClientOrderId": "cb-share-1"}
    )
    trader.reconcile()  # the BTC market's order is applied to the BTC market's share only
    account = signed_sim.exchange.accounts.account(KEY)
    btc = store.get_position(engine, "live", MARKET)
    assert btc.base == pytest.approx(account.balances["BTC"], abs=1e-12)
    assert btc.quote == pytest.approx(5_000.0 - answer["cost"], abs=1e-6)
    assert store.get_position(engine, "live", eth).quote == pytest.approx(5_000.0)
    total = sum(store.get_position(engine, "live", m).quote for m in (MARKET, eth))
    assert total == pytest.approx(account.balances["USDT"], abs=1e-6)


def test_a_burst_of_5xx_opens_the_circuit_breaker_and_it_closes_again(
    fresh_pg, simulator: Callable[..., AbstractContextManager[Running]], tmp_path: Path
) -> None:
    engine = fresh_pg()
    champion(engine, tmp_path)
    with simulator(shift_to_now=True, speed=SPEED) as sim:
        settings = settings_for(
            engine.url.render_as_string(False),
            sim,
            tmp_path,
            # flash_move off: the recorded data's listing bad print would pause entries too
            risk={"breaker_errors": 3, "breaker_cooldown_seconds": 3600.0, "flash_move": 100.0},
        )
        trader = make_trader(settings, engine, client(sim.url, attempts=2))
        run_until(trader, lambda: rows(engine, "SELECT count(*) FROM decisions")[0][0] >= 1, 60)
        sim.exchange.faults.kinds = ("500", "502", "503")
        sim.exchange.faults.rate = 1.0
        breaker = lambda: trader.risk.snapshot()["breakers"]["binance"]["status"]  # noqa: E731
        run_until(trader, lambda: breaker() == "open", 60)
        assert trader.risk.state(MARKET) == "HALTED"
        sim.exchange.faults.rate = 0.0
        before = rows(engine, "SELECT count(*) FROM decisions")[0][0]
        run_until(trader, lambda: rows(engine, "SELECT count(*) FROM decisions")[0][0] > before, 60)
    events = rows(
        engine, "SELECT market, from_state, to_state, reason FROM risk_events ORDER BY id"
    )
    assert [(e[1], e[2]) for e in events] == [("ACTIVE", "HALTED"), ("HALTED", "ACTIVE")]
    assert "3 consecutive errors" in events[0][3]
    assert "half-open" in events[1][3]
    assert breaker() == "closed"
    assert trader.risk.state(MARKET) == "ACTIVE"
    errors = trader.metrics.exchange_errors.labels("binance")._value.get()
    assert errors >= 3


class Outage:
    """A TCP proxy in front of Postgres that can go down (connections cut, port closed)
    and come back on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.conns: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(16)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def down(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            with suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            listener.close()
        for conn in self.conns:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self.conns = []

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 1.0)
                for source in ready:
                    data = source.recv(65536)
                    if not data:
                        return
                    (b if source is a else a).sendall(data)
        except OSError:
            return


def test_the_database_going_away_halts_trading_and_it_resumes_when_back(
    fresh_pg, simulator: Callable[..., AbstractContextManager[Running]], tmp_path: Path
) -> None:
    engine = fresh_pg()
    champion(engine, tmp_path)
    server = sa.make_url(PG_SERVER_URL)
    proxy = Outage((server.host, server.port or 5432))
    url = engine.url.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
    proxied = create_engine(url)
    with simulator(shift_to_now=True, speed=SPEED) as sim:
        trader = make_trader(settings_for(url, sim, tmp_path), proxied, client(sim.url))
        count = lambda: rows(engine, "SELECT count(*) FROM decisions")[0][0]  # noqa: E731
        run_until(trader, lambda: count() >= 2, 60)
        proxy.down()
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            trader.step()  # must not raise
            time.sleep(0.05)
        assert not trader.db_ok
        assert trader.metrics.db_up._value.get() == 0
        ready, reasons = trader.readiness()
        assert not ready
        assert "state database unreachable" in reasons
        during = count()
        proxy.up()
        run_until(trader, lambda: count() >= during + 2, 60)
        assert trader.db_ok
    candles = [r[0] for r in rows(engine, "SELECT candle_ts FROM decisions ORDER BY candle_ts")]
    assert len(candles) == len(set(candles))
    proxy.down()
    proxied.dispose()
