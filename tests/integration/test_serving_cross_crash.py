"""The cross trader killed with SIGKILL at random moments, again and again, trading a
spread between two simulated venues under injected faults: no order is sent twice, no
trade is left open, and what its tables say each leg moved equals what each venue
holds."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from pipeline.exchanges.simulator.app import Running
from tests.support.cross_venues import INVENTORY, SECRET, cross_env, two_venues
from tests.support.live_trader import kill_repeatedly, start_trader, started_count
from tests.support.trading import rows

RESTARTS = 10
MIN_TRADES = 5
CROSS = ("--strategy", "cross")


def traded(engine) -> int:
    return rows(engine, "SELECT count(*) FROM arb_opportunities")[0][0]


def booked(engine, venue: str) -> dict[str, float]:
    """What the legs sent to `venue` moved, by asset, as the tables record it."""
    moved: dict[str, float] = {}
    sql = f"SELECT source, target, spent, received FROM arb_legs WHERE venue = '{venue}'"
    for source, target, spent, received in rows(engine, sql):
        moved[source] = moved.get(source, 0.0) - spent
        moved[target] = moved.get(target, 0.0) + received
    return moved


def test_sigkill_at_random_points_never_doubles_a_leg_and_books_match_both_venues(
    fresh_pg,
    simulator: Callable[..., AbstractContextManager[Running]],
    tmp_path: Path,
) -> None:
    engine = fresh_pg()
    rng = random.Random(5)
    log = tmp_path / "cross.log"
    faults = {
        "fault_rate": 0.05,
        "fault_kinds": ("500", "503", "malformed", "drop", "latency"),
        "seed": 13,
    }
    with two_venues(simulator, **faults) as venues:
        venues[1].plant(60.0, seconds=3600.0)
        env = cross_env(engine, venues) | {
            "CRYPTOBOTS_ARBITRAGE__POLL_SECONDS": "0.05",
            "CRYPTOBOTS_ARBITRAGE__TAKER_FEE_BPS": "10",
            "CRYPTOBOTS_ARBITRAGE__MAX_CYCLE_NOTIONAL": "150",
            "CRYPTOBOTS_ARBITRAGE__MAX_CYCLES_PER_HOUR": "100000",
            "CRYPTOBOTS_ARBITRAGE__BREAKER_LEG_FAILURES": "100000",
            "CRYPTOBOTS_SERVING__FAILOVER_SECONDS": "1.5",
        }
        kill_repeatedly(env, log, RESTARTS, rng, *CROSS)
        for venue in venues:
            venue.sim.exchange.faults.rate = 0.0
        process = start_trader(env, log, *CROSS)
        before = traded(engine)
        deadline = time.monotonic() + 180
        while traded(engine) < max(before + 2, MIN_TRADES) or open_trades(engine):
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            assert process.poll() is None, log.read_text()[-3000:]
            time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()[-3000:]
        sent = {v.name: v.sent() for v in venues}
        filled = {v.name: v.filled() for v in venues}
        held = {v.name: v.held() for v in venues}

    assert started_count(log) >= RESTARTS // 2
    assert SECRET not in log.read_text(), "the API secret reached the logs"
    for name, ids in sent.items():
        assert len(ids) == len(set(ids)), f"a client order id reached {name} twice"
    legs = {r[0]: r[1] for r in rows(engine, "SELECT client_order_id, status FROM arb_legs")}
    assert set(sent["binanceus"]) | set(sent["kraken"]) <= set(legs), "an order nobody wrote"
    assert "pending" not in legs.values()
    recorded = {r[0]: r[1] for r in rows(engine, "SELECT client_order_id, filled FROM arb_legs")}
    wrong = {
        (name, cid): (amount, legs[cid], recorded[cid])
        for name, orders in filled.items()
        for cid, amount in orders.items()
        if abs(recorded[cid] - amount) > 1e-12
    }
    assert wrong == {}, "legs whose recorded fill is not the venue's: (venue, id): (venue, ours)"
    assert open_trades(engine) == 0
    for venue in ("binanceus", "kraken"):
        moved = booked(engine, venue)
        for asset, start in INVENTORY:
            assert held[venue][asset] - start == pytest.approx(moved.get(asset, 0.0), abs=1e-6)
    profit = rows(engine, "SELECT sum(realized_profit) FROM arb_opportunities")[0][0]
    usdc = sum(held[v]["USDC"] - dict(INVENTORY)["USDC"] for v in held)
    assert profit == pytest.approx(usdc, abs=0.01), "realized profit is the fills, to the cent"


def open_trades(engine) -> int:
    return rows(
        engine,
        "SELECT count(*) FROM arb_opportunities WHERE status IN ('executing', 'unwinding')",
    )[0][0]
