"""One active trader per market: leases with fencing tokens, on both backends. A lease
is taken whole or not at all, kept while renewed, taken over once it expired (token
+ 1), and a write with a stale token is refused with nothing written."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.settings import Settings
from serving.arbitrage import store as arb_store
from serving.kernel.lease import Lease, LeaseHeld, LeaseLost
from serving.model import decision_store, store
from tests.support.serving_rows import decision, paper_buy

BTC, ETH = "binance:BTC/USDT:1h", "binance:ETH/USDT:1h"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def engine(migrated_engine: Engine) -> Engine:
    with migrated_engine.begin() as conn:
        tables = ("trader_leases", "decisions", "orders", "fills", "positions")
        for table in (*tables, "arb_legs", "arb_opportunities"):
            conn.execute(sa.text(f"DELETE FROM {table}"))
    store.ensure_position(migrated_engine, "paper", BTC, 10_000.0)
    return migrated_engine


def lease(engine: Engine, clock: Clock, name: str, markets=(BTC,)) -> Lease:
    return Lease(engine, "paper", markets, ttl_seconds=10, holder=name, clock=clock)


def test_the_first_trader_takes_the_lease_and_a_second_stands_by(engine: Engine) -> None:
    clock = Clock()
    active, standby = lease(engine, clock, "a"), lease(engine, clock, "b")
    assert active.acquire()
    assert active.held
    assert not standby.acquire()
    assert not standby.held
    assert standby.holders() == {BTC: "a"}


def test_a_renewed_lease_is_kept_past_its_first_expiry(engine: Engine) -> None:
    clock = Clock()
    active, standby = lease(engine, clock, "a"), lease(engine, clock, "b")
    active.acquire()
    clock.now += 8
    assert active.renew()
    clock.now += 8
    assert not standby.acquire()


def test_an_expired_lease_is_taken_over_with_the_next_token(engine: Engine) -> None:
    clock = Clock()
    active, standby = lease(engine, clock, "a"), lease(engine, clock, "b")
    active.acquire()
    first = active.token(BTC)
    clock.now += 11
    assert standby.acquire()
    assert standby.token(BTC) == first + 1
    assert not active.renew(), "the old holder learns it lost the lease"
    assert not active.held


def test_a_lease_is_taken_whole_or_not_at_all(engine: Engine) -> None:
    clock = Clock()
    lease(engine, clock, "a", markets=(ETH,)).acquire()
    both = lease(engine, clock, "b", markets=(BTC, ETH))
    assert not both.acquire()
    assert lease(engine, clock, "c", markets=(BTC,)).acquire(), "BTC was left free"


def test_a_released_lease_is_taken_at_once(engine: Engine) -> None:
    clock = Clock()
    active, standby = lease(engine, clock, "a"), lease(engine, clock, "b")
    active.acquire()
    active.release()
    assert standby.acquire()


def test_a_decision_with_a_stale_token_writes_nothing(engine: Engine) -> None:
    clock = Clock()
    old, new = lease(engine, clock, "a"), lease(engine, clock, "b")
    old.acquire()
    stale = ("a", old.token(BTC))
    decision_store.record_decision(engine, decision(1, None), fence=stale)
    clock.now += 11
    new.acquire()
    order, execution = paper_buy("cid-2")
    with pytest.raises(LeaseLost, match="taken over"):
        decision_store.record_decision(engine, decision(2, "cid-2"), order, execution, fence=stale)
    decision_store.record_decision(engine, decision(3, None), fence=("b", new.token(BTC)))
    with engine.connect() as conn:
        decided = conn.execute(sa.text("SELECT candle_ts FROM decisions ORDER BY 1")).scalars()
        assert list(decided) == [1, 3]
        assert conn.execute(sa.text("SELECT count(*) FROM orders")).scalar() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM fills")).scalar() == 0
    assert store.get_position(engine, "paper", BTC).base == 0, "the position did not move"


def test_an_operators_order_with_a_stale_token_is_refused(engine: Engine) -> None:
    clock = Clock()
    old, new = lease(engine, clock, "a"), lease(engine, clock, "b")
    old.acquire()
    stale = ("a", old.token(BTC))
    clock.now += 11
    new.acquire()
    order, _ = paper_buy("flatten-1")
    with pytest.raises(LeaseLost):
        store.record_order(engine, order, fence=stale)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM orders")).scalar() == 0


@pytest.mark.parametrize("durable", [True, False], ids=["live", "paper"])
def test_a_cross_trade_is_written_whole_while_the_lease_holds_and_not_at_all_after(
    engine: Engine, durable: bool
) -> None:
    clock = Clock()
    old, new = lease(engine, clock, "a", (BTC, ETH)), lease(engine, clock, "b", (BTC, ETH))
    old.acquire()
    fence = ("paper", *old.fence())
    opportunity, first, more = trade_rows("t1")
    arb_store.open_opportunity(
        engine, opportunity, first, durable=durable, fence=fence, more_legs=more
    )
    clock.now += 11
    new.acquire()
    opportunity, first, more = trade_rows("t2")
    with pytest.raises(LeaseLost, match="taken over"):
        arb_store.open_opportunity(
            engine, opportunity, first, durable=durable, fence=fence, more_legs=more
        )
    assert [row["seq"] for row in arb_store.legs_of(engine, "t1")] == [0, 1]
    assert arb_store.legs_of(engine, "t2") == []
    with engine.connect() as conn:
        opened = conn.execute(sa.text("SELECT id FROM arb_opportunities"))
        assert opened.scalars().all() == ["t1"]


def trade_rows(trade: str) -> tuple[dict, dict, list[dict]]:
    """An opportunity with two legs, as the cross trader writes them."""
    opportunity = {
        "id": trade, "account": "paper", "exchange": "cross", "home": "USDC",
        "cycle": [["a:BTC/USDC", "buy"], ["b:BTC/USDC", "sell"]], "detected_ms": 1,
        "edge_bps": 50.0, "expected_start": 100.0, "expected_end": 100.5,
        "expected_bps": 50.0, "status": "executing",
    }  # fmt: skip
    legs = [
        {"client_order_id": f"{trade}-{seq}", "opportunity_id": trade, "seq": seq,
         "kind": "cross", "venue": venue, "symbol": "BTC/USDC", "side": side, "type": "limit",
         "source": "USDC", "target": "BTC", "amount": 0.01, "price": None if seq else 5e4}
        for seq, (venue, side) in enumerate((("a", "buy"), ("b", "sell")))
    ]  # fmt: skip
    return opportunity, legs[0], legs[1:]


def test_a_second_trader_that_is_no_standby_refuses_to_start_naming_the_holder(
    engine: Engine, tmp_path
) -> None:
    from serving.startup import claim

    settings = Settings(var_dir=tmp_path, serving={"failover_seconds": 0.3, "loop_seconds": 0.05})
    Lease(engine, "paper", (BTC,), ttl_seconds=60, holder="host-a:1:abc").acquire()
    second = SimpleNamespace(lease=Lease(engine, "paper", (BTC,), ttl_seconds=0.2))
    with pytest.raises(LeaseHeld, match=r"host-a:1:abc.*CRYPTOBOTS_SERVING__STANDBY"):
        claim(second, settings)


def test_a_standby_starts_without_waiting_for_the_lease(engine: Engine, tmp_path) -> None:
    from serving.startup import claim

    settings = Settings(var_dir=tmp_path, serving={"standby": True})
    Lease(engine, "paper", (BTC,), ttl_seconds=60, holder="host-a:1:abc").acquire()
    standby = SimpleNamespace(lease=Lease(engine, "paper", (BTC,), ttl_seconds=10))
    claim(standby, settings)
    assert not standby.lease.held


def test_a_stop_while_waiting_for_the_lease_ends_the_wait_without_taking_it(
    engine: Engine, tmp_path
) -> None:
    import threading
    import time

    from serving.startup import claim

    settings = Settings(var_dir=tmp_path, serving={"failover_seconds": 30, "loop_seconds": 0.05})
    Lease(engine, "paper", (BTC,), ttl_seconds=60, holder="host-a:1:abc").acquire()
    second = SimpleNamespace(lease=Lease(engine, "paper", (BTC,), ttl_seconds=20))
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()  # SIGTERM's handler sets it
    started = time.monotonic()
    claim(second, settings, stop=stop)
    assert time.monotonic() - started < 5, "it did not wait out the 20 s lease"
    assert not second.lease.held
    assert second.lease.holders() == {BTC: "host-a:1:abc"}
