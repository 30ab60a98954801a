"""The trader killed with SIGKILL at random moments, again and again, trading through
the simulator's signed endpoints under injected faults: nothing is sent twice and its
books equal the exchange's."""

from __future__ import annotations

import random
import re
import signal
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.exchanges.simulator.app import Running
from tests.support.live_trader import (
    check_no_doubled_order,
    exchange_books,
    kill_repeatedly,
    live_env,
    promote_champion,
    start_trader,
    started_count,
)
from tests.support.trading import rows

RESTARTS = 20
MIN_ORDERS = 5
KEY, SECRET = "crash-test-key", "crash-test-secret"


def test_sigkill_at_random_points_never_doubles_an_order_and_books_match_the_exchange(
    fresh_pg,
    simulator: Callable[..., AbstractContextManager[Running]],
    tmp_path: Path,
) -> None:
    engine: Engine = fresh_pg()
    promote_champion(engine, tmp_path, "crash test")
    rng = random.Random(7)
    log = tmp_path / "trader.log"
    with simulator(
        shift_to_now=True,
        speed=3600.0,
        api_keys=((KEY, SECRET),),
        fault_rate=0.05,
        fault_kinds=("500", "503", "malformed", "drop", "latency"),
        seed=11,
    ) as sim:
        env = live_env(engine, sim, KEY, SECRET) | {
            "CRYPTOBOTS_VAR_DIR": str(tmp_path / "var"),
            "CRYPTOBOTS_SERVING__LOOP_SECONDS": "0.05",
            # a restart waits out its killed predecessor's lease: keep that short here
            "CRYPTOBOTS_SERVING__FAILOVER_SECONDS": "1.5",
        }
        kill_repeatedly(env, log, RESTARTS, rng)
        sim.exchange.faults.rate = 0.0
        process = start_trader(env, log)
        before = rows(engine, "SELECT count(*) FROM decisions")[0][0]
        orders = sim.exchange.accounts.account(KEY).orders
        deadline = time.monotonic() + 180
        # the last run trades on until the whole test has sent enough orders to prove
        # something: how many the killed runs sent depends on the machine's load
        while (
            rows(engine, "SELECT count(*) FROM decisions")[0][0] < before + 3
            or len(orders) < MIN_ORDERS
        ):
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        sent = [o.client_order_id for o in sim.exchange.accounts.account(KEY).orders]
        exchange_base, exchange_quote = exchange_books(sim, KEY)

    output = log.read_text()
    assert SECRET not in output, "the API secret reached the logs"
    assert KEY not in output, "the API key reached the logs"
    assert started_count(log) >= RESTARTS // 2
    check_no_doubled_order(engine, sent, (exchange_base, exchange_quote), MIN_ORDERS)
    orphans = rows(
        engine,
        "SELECT d.candle_ts FROM decisions d LEFT JOIN orders o "
        "ON o.client_order_id = d.client_order_id "
        "WHERE (d.outcome = 'order' AND o.client_order_id IS NULL) "
        "OR (d.outcome = 'denied' AND d.reason IS NULL)",
    )
    assert orphans == []
    assert "balances differ" not in output, re.findall(r".*balances differ.*", output)[:3]
    with engine.connect() as conn:
        decided = conn.execute(sa.text("SELECT count(*) FROM decisions")).scalar()
    assert decided >= RESTARTS // 2
