"""Live shorts on the simulator's cross-margin account (`serving.margin`): a short sell
borrows, the buy back repays, kill -9 never leaves a loan idle or an order doubled, and
a missing margin account or a refused borrow is refused with the setting to change, and a
short whose margin level falls to serving.margin_close_level is bought back before the
exchange would liquidate it."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine

from pipeline.exchanges.simulator.app import Running
from pipeline.exchanges.simulator.records import MarginTerms
from tests.support.live_trader import (
    idle_loans,
    kill_repeatedly,
    live_env,
    margin_books,
    promote_champion,
    start_trader,
)
from tests.support.paths import REPO
from tests.support.trading import rows

KEY, SECRET = "margin-trader-key", "margin-trader-secret"
SHORT_FLAT = (-1.0, 0.0)
RESTARTS = 20
Simulator = Callable[..., AbstractContextManager[Running]]


def fund_margin(sim: Running, usdt: float = 10_000.0) -> None:
    """Move the key's USDT from spot to its cross-margin wallet, as a user does first."""
    transfer = {"type": "MAIN_MARGIN", "asset": "USDT", "amount": str(usdt)}
    sim.exchange.accounts.transfer(KEY, transfer, 0, {"USDT": 1.0})


def margin_env(engine: Engine, sim: Running, tmp_path: Path) -> dict[str, str]:
    return live_env(engine, sim, KEY, SECRET) | {
        "CRYPTOBOTS_VAR_DIR": str(tmp_path / "var"),
        "CRYPTOBOTS_SERVING__MARGIN": "true",
        "CRYPTOBOTS_SERVING__LOOP_SECONDS": "0.05",
        "CRYPTOBOTS_SERVING__FAILOVER_SECONDS": "1.5",
    }


def late_interest(sim: Running, engine: Engine) -> float:
    """BTC interest the exchange charged after the trader's books last took it (hourly
    charges land on the simulator's fast clock between the last decision and the stop)."""
    [(carried,)] = rows(engine, "SELECT carried_to FROM positions WHERE account = 'live'")
    charges = sim.exchange.accounts.margin_wallet(KEY).charges
    return sum(c.interest for c in charges if c.asset == "BTC" and c.time > (carried or 0))


def decisions(engine: Engine) -> int:
    return rows(engine, "SELECT count(*) FROM decisions")[0][0]


def wait_for(
    done: Callable[[], bool], process: subprocess.Popen, log: Path, seconds: float = 120
) -> None:
    """Until `done()`, while the trader runs; its log's tail when it dies or time is up."""
    deadline = time.monotonic() + seconds
    while not done():
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.3)


def run_until(engine: Engine, process: subprocess.Popen, log: Path, decided: int) -> None:
    wait_for(lambda: decisions(engine) >= decided, process, log)


def bought_back(sim: Running) -> bool:
    """Whether the margin wallet has sold, then bought."""
    sides = [o.side for o in list(sim.exchange.accounts.margin_wallet(KEY).orders)]
    return "SELL" in sides and "BUY" in sides[sides.index("SELL") :]


def test_a_short_target_borrows_sells_and_the_books_equal_the_exchanges_net(
    fresh_pg, simulator: Simulator, tmp_path: Path
) -> None:
    engine: Engine = fresh_pg()
    promote_champion(engine, tmp_path, "margin test", action_map=SHORT_FLAT)
    log = tmp_path / "trader.log"
    with simulator(shift_to_now=True, speed=3600.0, api_keys=((KEY, SECRET),)) as sim:
        fund_margin(sim)
        process = start_trader(margin_env(engine, sim, tmp_path), log)
        wait_for(lambda: bought_back(sim), process, log, 180)  # a short opened, bought back
        run_until(engine, process, log, decisions(engine) + 2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()[-3000:]
        wallet = sim.exchange.accounts.margin_wallet(KEY)
        borrows = [loan for loan in wallet.loans if loan.type == "BORROW"]
        margin_orders = wallet.orders
        exchange_base, exchange_quote = margin_books(sim, KEY)
        late = late_interest(sim, engine)
        idle = idle_loans(sim, KEY)
        spot_orders = sim.exchange.accounts.account(KEY).orders

    assert borrows, "no short was opened: the test would prove nothing"
    assert {o.side for o in margin_orders} == {"BUY", "SELL"}
    assert spot_orders == [], "a margin trader sent a spot order"
    assert idle == {}
    [(base, quote)] = rows(engine, "SELECT base, quote FROM positions WHERE account = 'live'")
    assert base - late == pytest.approx(exchange_base, abs=1e-9)
    assert quote == pytest.approx(exchange_quote, abs=1e-6)
    reasons = [r[0] for r in rows(engine, "SELECT reason FROM decisions")]
    assert not any("need a margin account" in (r or "") for r in reasons)


def test_sigkill_during_margin_trading_leaves_no_idle_loan_and_no_doubled_order(
    fresh_pg, simulator: Simulator, tmp_path: Path
) -> None:
    engine: Engine = fresh_pg()
    promote_champion(engine, tmp_path, "margin crash test", action_map=SHORT_FLAT)
    rng = random.Random(5)
    log = tmp_path / "trader.log"
    with simulator(
        shift_to_now=True,
        speed=3600.0,
        api_keys=((KEY, SECRET),),
        fault_rate=0.05,
        fault_kinds=("500", "503", "malformed", "drop", "latency"),
        seed=13,
    ) as sim:
        fund_margin(sim)
        env = margin_env(engine, sim, tmp_path)
        kill_repeatedly(env, log, RESTARTS, rng)
        sim.exchange.faults.rate = 0.0
        process = start_trader(env, log)
        run_until(engine, process, log, decisions(engine) + 3)
        wallet = sim.exchange.accounts.margin_wallet(KEY)
        wait_for(lambda: len(wallet.orders) >= 6 and bought_back(sim), process, log)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()[-3000:]
        wallet = sim.exchange.accounts.margin_wallet(KEY)
        sent = [o.client_order_id for o in wallet.orders]
        borrows = [loan for loan in wallet.loans if loan.type == "BORROW"]
        exchange_base, exchange_quote = margin_books(sim, KEY)
        late = late_interest(sim, engine)
        idle = idle_loans(sim, KEY)

    assert borrows, "the trader never shorted: the test would prove nothing"
    assert len(sent) >= 6, "the trader hardly traded: the test would prove nothing"
    assert len(sent) == len(set(sent)), "a client order id reached the exchange twice"
    assert idle == {}, "a loan was left idle"
    ours = {r[0]: r[1] for r in rows(engine, "SELECT client_order_id, status FROM orders")}
    assert set(sent) <= set(ours), "the exchange has an order the trader does not know"
    [(base, quote)] = rows(engine, "SELECT base, quote FROM positions WHERE account = 'live'")
    assert base - late == pytest.approx(exchange_base, abs=1e-9)
    assert quote == pytest.approx(exchange_quote, abs=1e-6)


def test_a_margin_trader_on_an_account_without_margin_refuses_to_start(
    fresh_pg, simulator: Simulator, tmp_path: Path
) -> None:
    engine: Engine = fresh_pg()
    promote_champion(engine, tmp_path, "no margin", action_map=SHORT_FLAT)
    with simulator(shift_to_now=True, api_keys=((KEY, SECRET),), margin=None) as sim:
        done = subprocess.run(
            [sys.executable, "-m", "serving", "--live", "--log-format", "text"],
            env=margin_env(engine, sim, tmp_path),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode != 0
    assert "Margin account does not exist" in done.stderr + done.stdout
    assert "CRYPTOBOTS_SERVING__MARGIN=false" in done.stderr + done.stdout
    assert rows(engine, "SELECT count(*) FROM orders")[0][0] == 0


def test_a_refused_borrow_rejects_the_short_and_sends_nothing(
    fresh_pg, simulator: Simulator, tmp_path: Path
) -> None:
    engine: Engine = fresh_pg()
    promote_champion(engine, tmp_path, "refused borrow", action_map=SHORT_FLAT)
    log = tmp_path / "trader.log"
    tight = MarginTerms(max_leverage=1.01)  # the account may borrow next to nothing
    with simulator(shift_to_now=True, speed=3600.0, api_keys=((KEY, SECRET),), margin=tight) as sim:
        fund_margin(sim)
        process = start_trader(margin_env(engine, sim, tmp_path), log)
        run_until(engine, process, log, 6)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()[-3000:]
        wallet = sim.exchange.accounts.margin_wallet(KEY)
        sells = [o for o in wallet.orders if o.side == "SELL"]
        loans = list(wallet.loans)

    assert sells == []
    assert loans == []
    rejected = rows(engine, "SELECT status, error FROM orders WHERE side = 'sell'")
    assert rejected, "no short was attempted: the test would prove nothing"
    assert all(status == "rejected" for status, _ in rejected)
    assert all("serving.margin" in (error or "") for _, error in rejected), rejected


def test_a_rejected_short_sell_repays_what_it_borrowed_at_once(
    fresh_pg, simulator: Simulator, tmp_path: Path
) -> None:
    engine: Engine = fresh_pg()
    promote_champion(engine, tmp_path, "rejected sell", action_map=SHORT_FLAT)
    log = tmp_path / "trader.log"
    with simulator(shift_to_now=True, speed=3600.0, api_keys=((KEY, SECRET),)) as sim:
        fund_margin(sim)
        reject = {"symbol": "BTCUSDT", "kind": "reject", "count": 1000}
        assert httpx.post(f"{sim.url}/sim/leg-fault", json=reject).status_code == 200
        process = start_trader(margin_env(engine, sim, tmp_path), log)
        wallet = sim.exchange.accounts.margin_wallet(KEY)
        wait_for(lambda: any(loan.type == "REPAY" for loan in list(wallet.loans)), process, log)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()[-3000:]
        idle = idle_loans(sim, KEY)
        orders = list(wallet.orders)

    assert orders == [], "every margin order was rejected"
    assert idle == {}, "a borrow whose sell was rejected was left idle"
    rejected = rows(engine, "SELECT status FROM orders WHERE side = 'sell'")
    assert rejected
    assert {status for (status,) in rejected} == {"rejected"}


def test_a_short_whose_margin_level_falls_to_the_close_level_is_bought_back(
    fresh_pg, simulator: Simulator, tmp_path: Path
) -> None:
    engine: Engine = fresh_pg()
    promote_champion(engine, tmp_path, "close level", action_map=(-1.0, -1.0))  # always short
    log = tmp_path / "trader.log"
    with simulator(shift_to_now=True, speed=3600.0, api_keys=((KEY, SECRET),)) as sim:
        fund_margin(sim)
        env = margin_env(engine, sim, tmp_path) | {
            "CRYPTOBOTS_SERVING__MARGIN_CLOSE_LEVEL": "2.5"  # a fresh short opens near 3
        }
        process = start_trader(env, log)
        wallet = sim.exchange.accounts.margin_wallet(KEY)
        wait_for(lambda: any(o.side == "SELL" for o in list(wallet.orders)), process, log)
        sells = len(wallet.orders)
        spike = {"symbol": "BTCUSDT", "bps": 3000.0, "seconds": 600.0}  # BTC 30% up: level ~2.3
        assert httpx.post(f"{sim.url}/sim/plant", json=spike).status_code == 200
        wait_for(lambda: any(o.side == "BUY" for o in list(wallet.orders)[sells:]), process, log)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()[-3000:]
        liquidations = list(wallet.liquidations)

    reasons = [r[0] or "" for r in rows(engine, "SELECT reason FROM decisions")]
    assert any("serving.margin_close_level" in r for r in reasons), reasons[-5:]
    assert liquidations == [], "the trader closed before the exchange had to liquidate"
