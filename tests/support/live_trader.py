"""A live trader process over the simulator's signed endpoints, as the crash and the
failover tests run it: the champion it trades, its environment, the process."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from pipeline.exchanges.simulator.app import Running
from pipeline.exchanges.simulator.faults import LegFault
from pipeline.models.registry import model_name, move_alias, register
from tests.support.paths import REPO
from tests.support.policies import MARKET, NAME, exported_policy
from tests.support.trading import rows


def promote_champion(
    engine: Engine,
    tmp_path: Path,
    reason: str,
    action_map: tuple[float, ...] = (0.0, 1.0),
    market: str = MARKET,
) -> str:
    """Register and promote a small exported policy (long/flat, or `action_map`'s
    positions) as `market`'s champion; returns the artifact root."""
    root = f"file://{tmp_path / 'artifacts'}"
    policy = exported_policy(tmp_path, seed=3, action_map=action_map)
    name = NAME if market == MARKET else model_name(market)
    version = register(engine, root, policy, name)
    move_alias(engine, name, version, seen_generation=None, who="test", reason=reason)
    return root


def live_env(
    engine: Engine,
    sim: Running,
    key: str,
    secret: str,
    *,
    exchange: str = "binance",
    market: str = MARKET,
    ccxt_id: str | None = None,
) -> dict[str, str]:
    """This process's environment without its CRYPTOBOTS_* settings, plus a live trader's
    on `market` of `exchange` (the simulator, through ccxt's `ccxt_id` class when given)
    with the simulator's keys (`key`, `secret`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOBOTS_")}
    prefix = f"CRYPTOBOTS_EXCHANGES__{exchange.upper()}__"
    env |= {
        "CRYPTOBOTS_DB_URL": engine.url.render_as_string(hide_password=False),
        f"{prefix}URL": sim.url,
        f"{prefix}CREDENTIALS": "env:SIMKEYS",
        "CRYPTOBOTS_TRADING_MODE": "live",
        "SIMKEYS_API_KEY": key,
        "SIMKEYS_SECRET": secret,
        "CRYPTOBOTS_MARKETS": market,
        "CRYPTOBOTS_SERVING__PORT": "0",
        "CRYPTOBOTS_SERVING__RISK__MAX_ORDERS_PER_HOUR": "1000",
    }
    return env | ({f"{prefix}CCXT_ID": ccxt_id} if ccxt_id else {})


def start_trader(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    """`python -m serving --live [args]`, its output appended to `log`."""
    return subprocess.Popen(
        [sys.executable, "-m", "serving", "--live", "--log-format", "text", *args],
        env=env,
        cwd=REPO,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
    )


def margin_books(sim: Running, key: str) -> tuple[float, float]:
    """(BTC, USDT) the simulator's margin wallet of `key` holds net of its loans."""
    wallet = sim.exchange.accounts.margin_wallet(key)

    def net(asset: str) -> float:
        held = wallet.balances.get(asset, 0.0) + wallet.locked.get(asset, 0.0)
        return held - wallet.borrowed.get(asset, 0.0) - wallet.interest.get(asset, 0.0)

    return net("BTC"), net("USDT")


def idle_loans(sim: Running, key: str) -> dict[str, float]:
    """Loans the margin wallet of `key` could repay from its own free balance."""
    wallet = sim.exchange.accounts.margin_wallet(key)
    owed = {a: wallet.borrowed.get(a, 0.0) + wallet.interest.get(a, 0.0) for a in wallet.borrowed}
    idle = {a: min(wallet.balances.get(a, 0.0), debt) for a, debt in owed.items()}
    return {a: amount for a, amount in idle.items() if amount > 1e-9}


def exchange_books(
    sim: Running, key: str, base: str = "BTC", quote: str = "USDT"
) -> tuple[float, float]:
    """(base, quote) the simulator's account of `key` holds."""
    balances = dict(sim.exchange.accounts.account(key).balances)
    return balances.get(base, 0.0), balances[quote]


def started_count(log: Path) -> int:
    """Trader starts that got as far as serving health, in the shared log so far."""
    return log.read_text().count("health http://") if log.exists() else 0


def kill_repeatedly(
    env: dict[str, str], log: Path, restarts: int, rng: random.Random, *args: str
) -> None:
    """Start the live trader `restarts` times and SIGKILL it each time: every other start
    once it serves health, a random part of its start-up time later (while it trades);
    the others at a random point of a start-up (most die before trading). Half the starts
    reach health however loaded the machine is, and the kills cover both phases."""
    startup = None
    for attempt in range(restarts):
        healthy, started = started_count(log), time.monotonic()
        process = start_trader(env, log, *args)
        if attempt % 2 == 0 or startup is None:
            while started_count(log) == healthy:
                assert process.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() - started < 120, log.read_text()[-3000:]
                time.sleep(0.05)
            startup = time.monotonic() - started
            time.sleep(rng.uniform(0.0, startup))
        else:
            time.sleep(rng.uniform(0.3, 1.5) * startup)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)


def kill_with_an_order_in_flight(
    env: dict[str, str],
    log: Path,
    sim: Running,
    symbol: str,
    rng: random.Random,
    hold_seconds: float = 2.0,
    wait_seconds: float = 120.0,
) -> None:
    """Start the live trader and SIGKILL it while an order it sent is in flight: the
    simulator holds its next order on `symbol` (the exchange's market id) `hold_seconds`
    before matching it, and the kill lands inside that hold, after the request arrived
    and before any answer. The order is matched after the trader died."""
    faults = sim.exchange.leg_faults
    arrived = faults.consumed["delay"]
    faults.add(LegFault(symbol, "delay", seconds=hold_seconds))
    process = start_trader(env, log)
    deadline = time.monotonic() + wait_seconds
    while faults.consumed["delay"] == arrived:
        assert process.poll() is None, log.read_text()[-3000:]
        if time.monotonic() > deadline:
            process.send_signal(signal.SIGKILL)
            faults.clear()
            pytest.fail(f"the trader sent no order on {symbol} in {wait_seconds:g} s")
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.75 * hold_seconds))
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def check_no_doubled_order(
    engine: Engine, sent: list[str], books: tuple[float, float], min_orders: int
) -> None:
    """What every crash test of the model trader checks at the end: it traded enough to
    prove something, no client order id reached the exchange twice, the exchange has no
    order the trader does not know, every order is settled, and the live position equals
    the exchange's (base, quote) `books`."""
    assert len(sent) >= min_orders, "the trader hardly traded: the test would prove nothing"
    assert len(sent) == len(set(sent)), "a client order id reached the exchange twice"
    ours = {r[0]: r[1] for r in rows(engine, "SELECT client_order_id, status FROM orders")}
    assert set(sent) <= set(ours), "the exchange has an order the trader does not know"
    assert all(status in ("filled", "expired", "rejected") for status in ours.values()), ours
    [(base, quote)] = rows(engine, "SELECT base, quote FROM positions WHERE account = 'live'")
    assert base == pytest.approx(books[0], abs=1e-9)
    assert quote == pytest.approx(books[1], abs=1e-6)
