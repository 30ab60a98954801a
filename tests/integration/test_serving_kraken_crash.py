"""The model trader live on Kraken's own API (the simulator's Kraken dialect, through
ccxt's `kraken` class), killed with SIGKILL ten times: five at random moments (every
other one while it trades), five while an order it sent is in flight (held by the
exchange, matched after the kill): no order reaches the exchange twice, every order the
exchange has is one the trader wrote down, and its position equals the exchange's
balances after every restart."""

from __future__ import annotations

import base64
import random
import signal
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from sqlalchemy.engine import Engine

from pipeline.exchanges.simulator.app import Running
from tests.support.live_trader import (
    check_no_doubled_order,
    exchange_books,
    kill_repeatedly,
    kill_with_an_order_in_flight,
    live_env,
    promote_champion,
    start_trader,
    started_count,
)
from tests.support.trading import rows

RESTARTS = 5  # at random moments
IN_FLIGHT = 5  # with an order in flight
MIN_ORDERS = 3
MARKET = "kraken:BTC/USDC:1m"
KEY = "kraken-crash-key"
SECRET = base64.b64encode(b"kraken-crash-secret".ljust(64, b"#")).decode()


def kraken_env(engine: Engine, sim: Running, tmp_path: Path) -> dict[str, str]:
    """A live model trader on the Kraken dialect's BTC/USDC, with a fast loop."""
    env = live_env(engine, sim, KEY, SECRET, exchange="kraken", market=MARKET, ccxt_id="kraken")
    return env | {
        "CRYPTOBOTS_EXCHANGES__KRAKEN__RATE_LIMIT_MS": "10",
        "CRYPTOBOTS_SERVING__LOOP_SECONDS": "0.05",
        "CRYPTOBOTS_SERVING__FAILOVER_SECONDS": "1.5",
        "CRYPTOBOTS_VAR_DIR": str(tmp_path / "var"),
    }


def test_sigkill_on_krakens_api_never_doubles_an_order_and_books_match_the_exchange(
    fresh_pg,
    simulator: Callable[..., AbstractContextManager[Running]],
    tmp_path: Path,
) -> None:
    engine: Engine = fresh_pg()
    promote_champion(engine, tmp_path, "kraken crash test", market=MARKET)
    rng = random.Random(3)
    log = tmp_path / "trader.log"
    with simulator(
        exchange="kraken",
        dialect="kraken",
        shift_to_now=True,
        speed=60.0,
        api_keys=((KEY, SECRET),),
        initial_balances=(("USDC", 10_000.0),),
    ) as sim:
        env = kraken_env(engine, sim, tmp_path)
        kill_repeatedly(env, log, RESTARTS, rng)
        for _ in range(IN_FLIGHT):
            kill_with_an_order_in_flight(env, log, sim, "BTCUSDC", rng)
        process = start_trader(env, log)
        orders = sim.exchange.accounts.account(KEY).orders
        before = rows(engine, "SELECT count(*) FROM decisions")[0][0]
        deadline = time.monotonic() + 180
        while (
            rows(engine, "SELECT count(*) FROM decisions")[0][0] < before + 3
            or len(orders) < MIN_ORDERS
        ):
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            assert process.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()[-3000:]
        sent = [o.client_order_id for o in orders]
        exchange_base, exchange_quote = exchange_books(sim, KEY, "BTC", "USDC")

    output = log.read_text()
    assert SECRET not in output, "the API secret reached the logs"
    assert started_count(log) >= RESTARTS // 2 + IN_FLIGHT
    assert sim.exchange.leg_faults.consumed["delay"] == IN_FLIGHT, "orders held in flight"
    check_no_doubled_order(engine, sent, (exchange_base, exchange_quote), MIN_ORDERS)
    assert "balances differ" not in output
    assert "the model needs" not in output, "Kraken's minutes without a trade left a window short"
