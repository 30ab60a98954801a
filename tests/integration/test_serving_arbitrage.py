"""The arbitrage trader against the simulator: a planted triangle is found and traded leg by
leg, a failed leg is unwound with its loss recorded, a trader killed in the middle of a
cycle settles it on restart without sending a leg twice, and the dust cycles leave is
reported and swept back to home once, past the minimums."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client import generate_latest
from sqlalchemy.engine import Engine

from pipeline.db.engine import create_engine
from pipeline.db.migrate import upgrade
from pipeline.db.schema import arb_legs, arb_opportunities
from pipeline.exchanges.client import ExchangeClient, open_exchange
from pipeline.exchanges.factory import Credentials
from pipeline.exchanges.simulator.app import Running
from pipeline.settings import Settings, load_settings
from serving.arbitrage.dust import DustLedger, dust_by_currency, plan_sweep, sweep_counts, sweep_id
from serving.arbitrage.ids import leg_client_id
from serving.arbitrage.trader import ArbitrageTrader
from serving.kernel.broker import ExchangeBroker, PaperBroker
from serving.kernel.lease import Lease, LeaseHeld
from serving.startup import claim
from tests.support.exchange import fast_retry
from tests.support.paths import REPO

KEY, SECRET = "arb-test-key", "arb-test-secret"
SYMBOLS = ("BTC/USDT", "ETH/USDT", "ETH/BTC")


def settings_for(sim: Running, engine: Engine, tmp_path: Path, **arbitrage: Any) -> Settings:
    return load_settings(
        var_dir=tmp_path / "var",
        db_url=engine.url.render_as_string(hide_password=False),
        exchanges={"binance": {"ccxt_id": "binance", "url": sim.url}},
        arbitrage={
            "symbols": SYMBOLS,
            "min_edge_bps": 1.0,
            "max_cycle_notional": 500.0,
            "poll_seconds": 0.05,
            **arbitrage,
        },
    )


def client(settings: Settings, live: bool) -> ExchangeClient:
    credentials = Credentials(KEY, SECRET) if live else None
    return open_exchange(settings, "binance", credentials, retry=fast_retry(), timeout_ms=3000)


def trader_for(
    settings: Settings, engine: Engine, live: bool = False, lease_ttl: float | None = None
) -> ArbitrageTrader:
    exchange = client(settings, live)
    broker = ExchangeBroker(exchange) if live else PaperBroker(exchange, 10.0)
    lease = None
    if lease_ttl is not None:
        markets = [f"arbitrage:binance:{symbol}" for symbol in SYMBOLS]
        lease = Lease(engine, "paper", markets, lease_ttl)
    trader = ArbitrageTrader(settings, engine, exchange, broker, lease=lease)
    trader.start()
    return trader


@cache
def http() -> httpx.Client:
    """One client for the simulator's controls (a new one per call costs 0.1 s of TLS setup)."""
    return httpx.Client(timeout=10)


def plant(sim: Running, symbol: str = "ETHBTC", bps: float = 40.0, seconds: float = 120) -> None:
    http().post(
        f"{sim.url}/sim/plant", json={"symbol": symbol, "bps": bps, "seconds": seconds}
    ).raise_for_status()


def leg_fault(sim: Running, **fault: Any) -> None:
    http().post(f"{sim.url}/sim/leg-fault", json=fault).raise_for_status()


def rows(engine: Engine, query: str, **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(query), params)]


@pytest.fixture
def sim(simulator: Callable[..., AbstractContextManager[Running]]) -> Iterator[Running]:
    with simulator(
        shift_to_now=True,
        consistent_books=True,
        api_keys=((KEY, SECRET),),
        initial_balances=(("USDT", 10_000.0),),
    ) as running:
        yield running


def test_consistent_books_offer_no_cycle(sim: Running, fresh_pg, tmp_path: Path) -> None:
    engine = fresh_pg()
    trader = trader_for(settings_for(sim, engine, tmp_path), engine)
    assert trader.step() == "idle"
    assert rows(engine, "SELECT id FROM arb_opportunities") == []


def test_planted_triangle_is_traded_on_paper_and_realizes_the_expected_profit(
    sim: Running, fresh_pg, tmp_path: Path
) -> None:
    engine = fresh_pg()
    trader = trader_for(settings_for(sim, engine, tmp_path), engine)
    plant(sim)
    assert trader.step() == "done"
    [opportunity] = rows(engine, "SELECT * FROM arb_opportunities")
    legs = rows(engine, "SELECT * FROM arb_legs ORDER BY seq")
    assert [(leg["symbol"], leg["side"]) for leg in legs] == [
        ("ETH/USDT", "buy"),
        ("ETH/BTC", "sell"),
        ("BTC/USDT", "sell"),
    ]
    assert all(leg["status"] == "filled" and leg["type"] == "limit" for leg in legs)
    assert [leg["client_order_id"] for leg in legs] == [
        leg_client_id(opportunity["id"], seq) for seq in range(3)
    ]
    assert opportunity["status"] == "done"
    assert 0 < opportunity["expected_bps"] < 40 - 30  # 40 bps planted, 3 x 10 bps fees
    assert opportunity["realized_start"] == pytest.approx(opportunity["expected_start"], rel=1e-9)
    # what the next leg receives is rounded to its own step: well under a basis point
    assert opportunity["realized_profit"] == pytest.approx(
        opportunity["expected_end"] - opportunity["expected_start"],
        abs=1e-4 * opportunity["expected_start"],
    )
    assert opportunity["realized_profit"] > 0
    assert opportunity["latency_ms"] is not None
    balances = {r["asset"]: r["amount"] for r in rows(engine, "SELECT * FROM arb_balances")}
    assert balances["USDT"] == pytest.approx(10_000.0 + opportunity["realized_profit"], abs=1e-9)
    fills = rows(engine, "SELECT count(*) AS n FROM arb_fills")[0]["n"]
    assert fills >= 3
    assert not sim.exchange.accounts.account(KEY).orders, "paper sent an order"


def test_on_paper_an_edge_already_traded_is_not_traded_again_until_the_books_change(
    sim: Running, fresh_pg, tmp_path: Path
) -> None:
    engine = fresh_pg()
    trader = trader_for(settings_for(sim, engine, tmp_path), engine)
    plant(sim, bps=40.0)
    assert trader.step() == "done"
    assert trader.step() == "seen", "paper fills leave the books as they were"
    assert len(rows(engine, "SELECT id FROM arb_opportunities")) == 1
    plant(sim, bps=60.0)
    assert trader.step() == "done"
    assert len(rows(engine, "SELECT id FROM arb_opportunities")) == 2


def test_a_cycle_below_the_threshold_is_not_traded(sim: Running, fresh_pg, tmp_path: Path) -> None:
    engine = fresh_pg()
    trader = trader_for(settings_for(sim, engine, tmp_path, min_edge_bps=20.0), engine)
    plant(sim)  # 40 bps before fees: about 8 after three 10 bps fees and the spreads
    assert trader.step() == "idle"
    assert rows(engine, "SELECT id FROM arb_opportunities") == []


def test_second_leg_rejected_is_unwound_at_market_and_the_loss_recorded(
    sim: Running, fresh_pg, tmp_path: Path
) -> None:
    engine = fresh_pg()
    trader = trader_for(settings_for(sim, engine, tmp_path), engine, live=True)
    plant(sim)
    leg_fault(sim, symbol="ETHBTC", kind="reject", count=1)
    assert trader.step() == "unwound"
    [opportunity] = rows(engine, "SELECT * FROM arb_opportunities")
    legs = rows(engine, "SELECT * FROM arb_legs ORDER BY seq")
    assert [(leg["kind"], leg["symbol"], leg["side"], leg["status"]) for leg in legs] == [
        ("cycle", "ETH/USDT", "buy", "filled"),
        ("cycle", "ETH/BTC", "sell", "rejected"),
        ("unwind", "ETH/USDT", "sell", "filled"),
    ]
    assert opportunity["status"] == "unwound"
    assert opportunity["failed_leg"] == 1
    assert "ETH/BTC" in opportunity["reason"]
    assert opportunity["realized_profit"] < 0
    assert opportunity["realized_profit"] == pytest.approx(
        legs[2]["received"] - legs[0]["spent"], abs=1e-9
    )
    account = sim.exchange.accounts.account(KEY)
    sent = [o.client_order_id for o in account.orders]
    assert sent == [legs[0]["client_order_id"], legs[2]["client_order_id"]]
    assert account.balances.get("ETH", 0.0) < 1e-4, "the unwind left ETH behind"
    assert account.balances["USDT"] == pytest.approx(10_000 + opportunity["realized_profit"])
    assert trader.risk.failures_in_a_row == 1
    assert trader.risk.day_loss == pytest.approx(-opportunity["realized_profit"])


def test_partial_leg_is_closed_and_nothing_is_left_exposed(
    sim: Running, fresh_pg, tmp_path: Path
) -> None:
    engine = fresh_pg()
    trader = trader_for(settings_for(sim, engine, tmp_path), engine, live=True)
    plant(sim)
    leg_fault(sim, symbol="ETHBTC", kind="partial", count=1, fraction=0.5)
    assert trader.step() == "unwound"
    legs = rows(engine, "SELECT * FROM arb_legs ORDER BY seq")
    assert legs[1]["status"] == "partial"
    assert legs[1]["filled"] == pytest.approx(legs[1]["amount"] / 2, rel=1e-3)
    assert len(legs) > 2
    assert all(leg["kind"] == "unwind" for leg in legs[2:])
    account = sim.exchange.accounts.account(KEY)
    assert account.balances.get("ETH", 0.0) < 1e-4
    assert account.balances.get("BTC", 0.0) < 1e-4
    [opportunity] = rows(engine, "SELECT * FROM arb_opportunities")
    assert opportunity["status"] == "unwound"


def test_breaker_opens_after_repeated_leg_failures_and_refuses_new_cycles(
    sim: Running, fresh_pg, tmp_path: Path
) -> None:
    engine = fresh_pg()
    settings = settings_for(sim, engine, tmp_path, breaker_leg_failures=2)
    trader = trader_for(settings, engine, live=True)
    plant(sim)
    leg_fault(sim, symbol="ETHBTC", kind="reject", count=2)
    assert trader.step() == "unwound"
    assert trader.step() == "unwound"
    assert trader.step() == "refused"
    assert len(rows(engine, "SELECT id FROM arb_opportunities")) == 2
    events = rows(engine, "SELECT to_state, reason FROM risk_events")
    assert any("circuit breaker open" in e["reason"] for e in events)


def test_a_second_arbitrage_trader_stands_by_while_the_first_holds_the_lease_then_takes_over(
    sim: Running, fresh_pg, tmp_path: Path
) -> None:
    engine = fresh_pg()
    settings = settings_for(sim, engine, tmp_path)
    first = trader_for(settings, engine, lease_ttl=30)
    second = trader_for(settings, engine, lease_ttl=30)
    assert first.step() == "idle"
    plant(sim)
    assert second.step() == "standby"
    status = second.status()
    assert not status["ready"]
    assert first.lease is not None
    assert first.lease.holder in " ".join(status["reasons"])
    assert rows(engine, "SELECT id FROM arb_opportunities") == []
    first.lease.release()  # a clean stop
    assert second.step() == "done"
    assert second.status()["lease"]["held"] is True


def test_an_arbitrage_trader_whose_lease_was_taken_over_writes_and_sends_nothing(
    sim: Running, fresh_pg, tmp_path: Path
) -> None:
    engine = fresh_pg()
    settings = settings_for(sim, engine, tmp_path)
    old = trader_for(settings, engine, lease_ttl=30)
    assert old.step() == "idle"
    with engine.begin() as conn:  # frozen past its lease: it expired
        conn.execute(sa.text("UPDATE trader_leases SET expires_at = 0"))
    new = trader_for(settings, engine, lease_ttl=30)
    assert new.step() == "idle"
    plant(sim)
    assert old.step() == "standby", "the old leader's first write is refused"
    assert rows(engine, "SELECT id FROM arb_opportunities") == []
    assert old.lease is not None
    assert not old.lease.held
    assert new.step() == "done"


def test_a_second_arbitrage_trader_that_is_no_standby_refuses_to_start_naming_the_holder(
    sim: Running, fresh_pg, tmp_path: Path
) -> None:
    engine = fresh_pg()
    settings = settings_for(sim, engine, tmp_path)
    first = trader_for(settings, engine, lease_ttl=30)
    second = trader_for(settings, engine, lease_ttl=0.5)
    assert first.lease is not None
    with pytest.raises(LeaseHeld, match=re.escape(first.lease.holder)) as refused:
        claim(second, settings)
    assert "CRYPTOBOTS_SERVING__STANDBY" in str(refused.value)


def daemon_env(sim: Running, engine: Engine, tmp_path: Path) -> dict[str, str]:
    """The environment of a `python -m serving --strategy arbitrage` on this simulator."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOBOTS_")}
    return env | {
        "CRYPTOBOTS_VAR_DIR": str(tmp_path / "var"),
        "CRYPTOBOTS_DB_URL": engine.url.render_as_string(hide_password=False),
        "CRYPTOBOTS_EXCHANGES__BINANCE__URL": sim.url,
        "CRYPTOBOTS_ARBITRAGE__SYMBOLS": json.dumps(SYMBOLS),
        "CRYPTOBOTS_ARBITRAGE__MIN_EDGE_BPS": "1",
        "CRYPTOBOTS_ARBITRAGE__MAX_CYCLE_NOTIONAL": "500",
        "CRYPTOBOTS_ARBITRAGE__POLL_SECONDS": "0.1",
        "CRYPTOBOTS_SERVING__PORT": "0",
        "CRYPTOBOTS_SERVING__FAILOVER_SECONDS": "1.5",  # a killed one's lease lasts 1 s
    }


@contextmanager
def trader_process(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    handle = log.open("a")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving",
            "--strategy",
            "arbitrage",
            "--live",
            "--log-format",
            "text",
        ],
        env=env,
        cwd=REPO,
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        handle.close()


def wait_for(condition: Callable[[], Any], log: Path, seconds: float = 60) -> Any:
    deadline = time.monotonic() + seconds
    while not (result := condition()):
        assert time.monotonic() < deadline, log.read_text()[-4000:]
        time.sleep(0.1)
    return result


@pytest.mark.parametrize("book_moves", [False, True], ids=["leg-fills", "leg-expires"])
def test_sigkill_in_the_middle_of_a_cycle_then_restart_sends_no_leg_twice_and_closes_it(
    sim: Running, fresh_pg, tmp_path: Path, book_moves: bool
) -> None:
    """Killed while the second leg is on its way (held by the simulator for 4 s). It
    lands after the kill: at its limit price while the plant lasts (fills), or after
    the plant is gone (expires unfilled, and the first leg's ETH must be unwound)."""
    engine = fresh_pg()
    log = tmp_path / "trader.log"
    env = daemon_env(sim, engine, tmp_path) | {
        "CRYPTOBOTS_EXCHANGES__BINANCE__CREDENTIALS": "env:SIMKEYS",
        "CRYPTOBOTS_TRADING_MODE": "live",
        "SIMKEYS_API_KEY": KEY,
        "SIMKEYS_SECRET": SECRET,
    }
    leg_fault(sim, symbol="ETHBTC", kind="delay", count=1, seconds=4.0)
    with trader_process(env, log) as process:
        wait_for(lambda: "health http://" in log.read_text(), log)
        plant(sim, seconds=600)
        wait_for(
            lambda: rows(engine, "SELECT 1 FROM arb_legs WHERE seq = 1 AND status = 'pending'"),
            log,
        )
        time.sleep(0.5)  # the second leg's request is on its way, held by the simulator
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    if book_moves:
        httpx.delete(f"{sim.url}/sim/plant").raise_for_status()
    account = sim.exchange.accounts.account(KEY)
    wait_for(lambda: len(account.orders) >= 2, log, seconds=20)  # the held leg lands late
    httpx.delete(f"{sim.url}/sim/plant").raise_for_status()  # nothing new to trade

    with trader_process(env, log) as process:
        wait_for(
            lambda: rows(
                engine, "SELECT 1 FROM arb_opportunities WHERE status IN ('done', 'unwound')"
            ),
            log,
        )
        time.sleep(1.0)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0

    [opportunity] = rows(engine, "SELECT * FROM arb_opportunities")
    legs = rows(engine, "SELECT * FROM arb_legs ORDER BY seq")
    sent = [o.client_order_id for o in account.orders]
    assert len(sent) == len(set(sent)), "a leg reached the exchange twice"
    assert set(sent) == {leg["client_order_id"] for leg in legs}
    assert legs[1]["status"] == ("expired" if book_moves else "filled")
    assert [leg["kind"] for leg in legs[2:]] == ["unwind"]
    assert legs[2]["symbol"] == ("ETH/USDT" if book_moves else "BTC/USDT")
    assert all(leg["status"] != "pending" for leg in legs)
    assert account.balances.get("ETH", 0.0) < 1e-4
    assert account.balances.get("BTC", 0.0) < 1e-4
    assert opportunity["realized_profit"] == pytest.approx(
        account.balances["USDT"] - 10_000.0, abs=1e-6
    )
    if book_moves:
        assert opportunity["realized_profit"] < 0
    output = log.read_text()
    assert SECRET not in output
    assert KEY not in output


def test_paper_daemon_runs_from_serving_requirements_alone_trades_a_plant_and_stops_cleanly(
    sim: Running, fresh_pg, tmp_path: Path, slim_python: str
) -> None:
    engine = fresh_pg()
    log = tmp_path / "trader.log"
    env = daemon_env(sim, engine, tmp_path) | {
        "CRYPTOBOTS_ARBITRAGE__MAX_CYCLES_PER_HOUR": "2",
        "CRYPTOBOTS_SERVING__CONTROL_TOKEN": "s3cret-token",
    }
    with log.open("a") as handle:
        process = subprocess.Popen(
            [slim_python, "-m", "serving", "--strategy", "arbitrage", "--log-format", "text"],
            env=env,
            cwd=REPO,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        base = wait_for(
            lambda: (m := re.search(r"health (http://\S+)/healthz", log.read_text())) and m[1],
            log,
            seconds=120,
        )
        ready = wait_for(lambda: (r := httpx.get(f"{base}/readyz")).status_code == 200 and r, log)
        assert ready.json()["strategy"] == "arbitrage"
        assert ready.json()["account"] == "paper"
        for n, bps in enumerate((40.0, 50.0), start=1):  # a new edge: the books change
            plant(sim, bps=bps)
            done = f'cryptobots_arbitrage_opportunities_total{{outcome="done"}} {n}.0'
            wait_for(lambda done=done: done in httpx.get(f"{base}/metrics").text, log)
        plant(sim, bps=60.0)
        wait_for(lambda: "max_cycles_per_hour" in log.read_text(), log)  # the third is refused
        right = {"Authorization": "Bearer s3cret-token"}
        paused = httpx.post(f"{base}/control/pause", headers=right)
        assert paused.json()["risk"]["state"] == "HALTED"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    statuses = rows(engine, "SELECT status FROM arb_opportunities")
    assert [s["status"] for s in statuses] == ["done", "done"]
    assert "s3cret-token" not in log.read_text()


def test_a_refused_exit_holds_new_cycles_until_the_exposure_is_closed(
    sim: Running, fresh_pg, tmp_path: Path
) -> None:
    engine = fresh_pg()
    trader = trader_for(settings_for(sim, engine, tmp_path), engine, live=True)
    plant(sim)
    leg_fault(sim, symbol="BTCUSDT", kind="reject", count=2)  # the last leg, then its exit
    assert trader.step() == "unwinding"
    [first] = rows(engine, "SELECT id, status FROM arb_opportunities")
    assert first["status"] == "unwinding"
    assert trader.status()["ready"] is False
    assert trader.step() == "done"  # closes the first one, then trades the next
    opportunities = rows(engine, "SELECT id, status FROM arb_opportunities ORDER BY detected_ms")
    assert [o["status"] for o in opportunities] == ["unwound", "done"]
    legs = rows(
        engine,
        "SELECT kind, symbol, status FROM arb_legs WHERE opportunity_id = :id ORDER BY seq",
        id=first["id"],
    )
    assert [(g["kind"], g["status"]) for g in legs] == [
        ("cycle", "filled"),
        ("cycle", "filled"),
        ("cycle", "rejected"),
        ("unwind", "rejected"),
        ("unwind", "filled"),
    ]
    assert sim.exchange.accounts.account(KEY).balances.get("BTC", 0.0) < 1e-4


def test_an_exposure_whose_exits_keep_being_refused_is_recorded_as_left_open(
    sim: Running, fresh_pg, tmp_path: Path
) -> None:
    engine = fresh_pg()
    trader = trader_for(settings_for(sim, engine, tmp_path), engine, live=True)
    plant(sim)
    leg_fault(sim, symbol="BTCUSDT", kind="reject", count=4)  # the last leg and 3 exits
    assert trader.step() == "unwinding"
    assert trader.step() == "reconciling"
    assert trader.step() == "reconciling"
    # the third refusal ends it; what is left open counts as lost: the day's limit halts
    assert trader.step() == "refused"
    [first] = rows(engine, "SELECT * FROM arb_opportunities")
    assert first["status"] == "unwound"
    assert first["realized_profit"] == pytest.approx(-first["realized_start"])
    assert trader.risk.state == "HALTED"
    assert "exits refused 3 times" in first["reason"]
    assert "BTC left open, close it by hand" in first["reason"]


def test_on_paper_a_leg_whose_book_moved_away_expires_and_is_unwound_in_the_paper_account(
    sim: Running, fresh_pg, tmp_path: Path
) -> None:
    engine = fresh_pg()
    trader = trader_for(settings_for(sim, engine, tmp_path), engine)
    plant(sim)
    books = trader._books(SYMBOLS)  # seen while ETH/BTC was 40 bps rich
    httpx.delete(f"{sim.url}/sim/plant").raise_for_status()  # gone before the legs go out
    assert trader.on_books(books, time.perf_counter(), int(time.time() * 1000)) == "unwound"
    [opportunity] = rows(engine, "SELECT * FROM arb_opportunities")
    legs = rows(engine, "SELECT * FROM arb_legs ORDER BY seq")
    assert [(g["kind"], g["symbol"], g["status"]) for g in legs[:2]] == [
        ("cycle", "ETH/USDT", "filled"),
        ("cycle", "ETH/BTC", "expired"),  # its limit was the planted bid
    ]
    assert [g["kind"] for g in legs[2:]] == ["unwind"] * len(legs[2:])
    assert opportunity["failed_leg"] == 1
    assert opportunity["realized_profit"] < 0
    balances = {r["asset"]: r["amount"] for r in rows(engine, "SELECT * FROM arb_balances")}
    assert balances["USDT"] == pytest.approx(10_000.0 + opportunity["realized_profit"], abs=1e-9)
    assert balances.get("ETH", 0.0) < 1e-4
    assert balances.get("BTC", 0.0) < 1e-4
    assert not sim.exchange.accounts.account(KEY).orders, "paper sent an order"


# -- dust ---------------------------------------------------------------------------------


def unthrottled(trader: ArbitrageTrader) -> ArbitrageTrader:
    """The simulator limits no rate: without ccxt's own pacing a cycle takes a fraction of
    the time, and dust takes a dozen cycles to pass a minimum."""
    trader.exchange.client.enableRateLimit = False
    return trader


def held(engine: Engine, home: str = "USDT") -> dict[str, float]:
    """Received minus spent per currency other than home, over every leg stored."""
    out: dict[str, float] = {}
    for leg in rows(engine, "SELECT source, target, spent, received FROM arb_legs"):
        out[leg["source"]] = out.get(leg["source"], 0.0) - leg["spent"]
        out[leg["target"]] = out.get(leg["target"], 0.0) + leg["received"]
    out.pop(home)
    return out


def sweeps(engine: Engine) -> list[dict[str, Any]]:
    return rows(engine, "SELECT * FROM arb_legs WHERE kind = 'sweep' ORDER BY created_at")


def is_steps(amount: float, step: float) -> bool:
    return abs(amount / step - round(amount / step)) < 1e-6


def sweepable(trader: ArbitrageTrader, currency: str) -> bool:
    books = trader._books(SYMBOLS)
    amount = trader.status()["dust"].get(currency, 0.0)
    return plan_sweep(currency, amount, "USDT", trader.rules, books, trader.fees) is not None


def test_dust_cycles_leave_is_derived_from_the_legs_reported_and_not_swept_below_the_minimum(
    sim: Running, fresh_pg, tmp_path: Path
) -> None:
    engine = fresh_pg()
    settings = settings_for(sim, engine, tmp_path)
    trader = unthrottled(trader_for(settings, engine))
    for n in range(3):
        plant(sim, bps=40.0 + n)  # a new edge each time: paper fills leave the books as they were
        assert trader.step() == "done"
    dust = trader.status()["dust"]
    assert set(dust) <= {"ETH", "BTC"}
    assert dust["BTC"] > 0
    assert dust == pytest.approx(held(engine), abs=1e-12)
    balances = {r["asset"]: r["amount"] for r in rows(engine, "SELECT * FROM arb_balances")}
    assert dust == pytest.approx({c: balances[c] for c in dust}, abs=1e-12)
    metrics = generate_latest(trader.metrics.registry).decode()
    assert f'cryptobots_arbitrage_dust{{currency="BTC"}} {dust["BTC"]}' in metrics
    assert not any(sweepable(trader, currency) for currency in dust)
    assert trader.step() == "seen"
    assert sweeps(engine) == [], "a sweep below the minimum was sent"
    again = trader_for(settings, engine)  # derived from the stored legs on start
    assert again.status()["dust"] == pytest.approx(dust, abs=1e-12)


def test_on_paper_dust_past_the_minimum_is_swept_once_back_to_home_and_counted_as_profit(
    sim: Running, fresh_pg, tmp_path: Path
) -> None:
    engine = fresh_pg()
    settings = settings_for(sim, engine, tmp_path, max_cycles_per_hour=1000)
    trader = unthrottled(trader_for(settings, engine))
    outcomes: list[str] = []
    while "swept" not in outcomes:
        assert len(outcomes) < 40, outcomes
        before = trader.status()["dust"]
        plant(sim, bps=40.0 + len(outcomes) / 4)
        outcomes.append(trader.step())
    assert set(outcomes[:-1]) == {"done"}  # nothing was swept while below the minimum
    [leg] = sweeps(engine)
    assert leg["client_order_id"] == leg_client_id(sweep_id("paper", "binance", "BTC", 0), 0)
    assert (leg["symbol"], leg["side"], leg["type"], leg["status"]) == (
        "BTC/USDT",
        "sell",
        "market",
        "filled",
    )
    assert is_steps(leg["amount"], 1e-5)
    assert 0 <= before["BTC"] - leg["amount"] < 1e-5  # the dust, rounded down to the step
    assert leg["spent"] == leg["amount"]
    [sweep] = rows(
        engine, "SELECT * FROM arb_opportunities WHERE id = :id", id=leg["opportunity_id"]
    )
    assert sweep["cycle"] == [["BTC/USDT", "sell", "BTC", "USDT"]]
    assert sweep["status"] == "done"
    assert sweep["realized_start"] == 0
    assert sweep["realized_profit"] == pytest.approx(leg["received"])
    assert leg["received"] >= 5 * (1 - 0.001)  # the minimum cost, less the paper fee
    after = trader.status()["dust"]
    assert after["BTC"] == pytest.approx(before["BTC"] - leg["amount"], abs=1e-12)
    assert 0 <= after["BTC"] < 1e-5  # less than one amount step is left
    assert after == pytest.approx(held(engine), abs=1e-12)
    assert not sweepable(trader, "BTC")
    profits = [r["realized_profit"] for r in rows(engine, "SELECT * FROM arb_opportunities")]
    assert trader.status()["realized_profit"] == pytest.approx(sum(profits), abs=1e-9)
    usdt = rows(engine, "SELECT amount FROM arb_balances WHERE asset = 'USDT'")[0]["amount"]
    assert usdt == pytest.approx(10_000.0 + sum(profits), abs=1e-9)
    metrics = generate_latest(trader.metrics.registry).decode()
    assert 'cryptobots_arbitrage_opportunities_total{outcome="swept"} 1.0' in metrics
    assert f'outcome="done"}} {len(outcomes) - 1}.0' in metrics
    again = trader_for(settings, engine)  # a restart on the same database
    assert again.status()["dust"] == pytest.approx(after, abs=1e-12)
    plant(sim, bps=50.0)
    assert again.step() == "done"
    assert len(sweeps(engine)) == 1, "the sweep was sent again"


class Killed(BaseException):
    """The trader dies (kill -9) right after its order left."""


class DiesAfterSending:
    """A broker that sends the order, then dies before the answer is stored."""

    def __init__(self, broker: ExchangeBroker) -> None:
        self.broker, self.live = broker, broker.live

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        self.broker.execute(*args, **kwargs)
        raise Killed

    def __getattr__(self, name: str) -> Any:
        return getattr(self.broker, name)


def test_live_dust_sweep_sent_before_a_crash_is_found_by_its_id_and_never_sent_twice(
    sim: Running, fresh_pg, tmp_path: Path
) -> None:
    """A last leg that fills 99.6% leaves about 0.4% of its BTC, some 2 USDT: below the
    minimums of every market that could take it (5 USDT on BTC/USDT, 0.00005 BTC on
    ETH/BTC), so it is dust, not an exposure to unwind. Two or three of them pass BTC/USDT's
    minimum; the sweep is then sent, and the trader dies before it hears the answer."""
    engine = fresh_pg()
    settings = settings_for(sim, engine, tmp_path, breaker_leg_failures=10)
    trader = unthrottled(trader_for(settings, engine, live=True))
    account = sim.exchange.accounts.account(KEY)
    partial = 0
    while not sweepable(trader, "BTC"):
        assert partial < 6, trader.status()["dust"]
        plant(sim, bps=40.0 + partial)
        leg_fault(sim, symbol="BTCUSDT", kind="partial", count=1, fraction=0.996)
        assert trader.step() == "unwound"
        # the exchange reports each cost in 8 decimals, its balance keeps more: the dust is
        # the account's to a few satoshis (a hundredth of BTC/USDT's amount step)
        assert trader.status()["dust"]["BTC"] == pytest.approx(account.balances["BTC"], abs=1e-7)
        partial += 1
        http().delete(f"{sim.url}/sim/plant").raise_for_status()
        if not sweepable(trader, "BTC"):
            assert trader.step() == "idle"  # no edge, and the dust is below the minimum
    assert sweeps(engine) == [], "a sweep below the minimum was sent"
    assert partial >= 2
    dust = trader.status()["dust"]["BTC"]

    trader.broker = DiesAfterSending(trader.broker)  # type: ignore[assignment]
    with pytest.raises(Killed):
        trader.step()
    [pending] = sweeps(engine)
    client_id = leg_client_id(sweep_id("live", "binance", "BTC", 0), 0)
    assert (pending["client_order_id"], pending["status"]) == (client_id, "pending")
    assert [o.client_order_id for o in account.orders].count(client_id) == 1

    restarted = unthrottled(trader_for(settings, engine, live=True))  # settles it on start
    assert restarted.reconciled
    [leg] = sweeps(engine)
    assert restarted.step() == "idle"
    assert [o.client_order_id for o in account.orders].count(client_id) == 1, "sent twice"
    assert sweeps(engine) == [leg]
    assert (leg["status"], leg["symbol"], leg["side"]) == ("filled", "BTC/USDT", "sell")
    assert is_steps(leg["amount"], 1e-5)
    assert 0 <= dust - leg["amount"] < 1e-5
    after = restarted.status()["dust"]["BTC"]
    assert after == pytest.approx(dust - leg["amount"], abs=1e-12)
    assert after == pytest.approx(account.balances["BTC"], abs=1e-7)
    assert not sweepable(restarted, "BTC")
    [sweep] = rows(
        engine, "SELECT * FROM arb_opportunities WHERE id = :id", id=leg["opportunity_id"]
    )
    assert sweep["status"] == "done"
    assert sweep["realized_profit"] == pytest.approx(leg["received"])
    assert leg["received"] > 0
    profits = sum(r["realized_profit"] for r in rows(engine, "SELECT * FROM arb_opportunities"))
    assert account.balances["USDT"] == pytest.approx(10_000.0 + profits, abs=1e-6)


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_dust_is_derived_from_finished_legs_leaving_out_home_and_exposures_left_open(
    fresh_pg, tmp_path: Path, backend: str
) -> None:
    if backend == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path / 'state.db'}")
        upgrade(engine)
    else:
        engine = fresh_pg()

    def opportunity(oid: str, status: str, reason: str | None = None, home: str = "USDT"):
        return {
            "id": oid,
            "account": "paper",
            "exchange": "binance",
            "home": home,
            "cycle": [],
            "detected_ms": 0,
            "edge_bps": 0.0,
            "expected_start": 0.0,
            "expected_end": 0.0,
            "expected_bps": 0.0,
            "status": status,
            "reason": reason,
        }

    def leg(oid: str, seq: int, kind: str, source: str, target: str, spent: float, got: float):
        return {
            "client_order_id": f"{oid}-{seq}",
            "opportunity_id": oid,
            "seq": seq,
            "kind": kind,
            "symbol": "X/Y",
            "side": "sell",
            "type": "limit",
            "source": source,
            "target": target,
            "amount": spent,
            "status": "filled",
            "spent": spent,
            "received": got,
        }

    with engine.begin() as conn:
        conn.execute(
            sa.insert(arb_opportunities),
            [
                opportunity("done", "done"),
                opportunity("unwound", "unwound", reason="leg 1 ETH/BTC sell: rejected"),
                opportunity("stuck", "unwound", reason="exits refused 3 times: 0.01 BTC left open"),
                opportunity("noexit", "unwound", reason="0.2 ETH: no exit"),
                opportunity("open", "unwinding"),
                opportunity("btc-home", "done", home="BTC"),
                opportunity("sweep", "done"),
            ],
        )
        conn.execute(
            sa.insert(arb_legs),
            [
                leg("done", 0, "cycle", "USDT", "ETH", 500.0, 0.2703),
                leg("done", 1, "cycle", "ETH", "BTC", 0.27, 0.0085),
                leg("done", 2, "cycle", "BTC", "USDT", 0.0084, 500.1),
                leg("unwound", 0, "cycle", "USDT", "ETH", 500.0, 0.2703),
                leg("unwound", 10, "unwind", "ETH", "USDT", 0.27, 499.0),
                leg("stuck", 0, "cycle", "USDT", "BTC", 500.0, 0.01),
                leg("noexit", 0, "cycle", "USDT", "ETH", 500.0, 0.2),
                leg("open", 0, "cycle", "USDT", "ETH", 500.0, 0.2),
                leg("btc-home", 0, "cycle", "BTC", "USDT", 0.01, 500.0),
                leg("sweep", 0, "sweep", "BTC", "USDT", 0.00005, 2.5),
            ],
        )
    dust = dust_by_currency(engine, "paper", "binance")
    assert dust == pytest.approx({"ETH": 0.0006, "BTC": 0.00005, "USDT": 500.0}), dust
    assert dust_by_currency(engine, "live", "binance") == {}
    assert sweep_counts(engine, "paper", "binance") == {"BTC": 1}
    ledger = DustLedger("USDT")
    ledger.load(engine, "paper", "binance")
    assert ledger.snapshot() == pytest.approx({"ETH": 0.0006, "BTC": 0.00005})
    assert ledger.number("BTC") == 1
