"""The main job end to end: what `make run` brings up really stores the simulator's
candles, promotes a verified champion and paper-trades with it."""

from __future__ import annotations

import time

import httpx
import pytest
import sqlalchemy as sa

from pipeline.db.engine import create_engine
from pipeline.models.registry import alias, load_verified, model_name
from serving.model.watch import WATCH_REASON
from tests.support.exchange import exchange_client
from tests.support.main_job import Stack, start

MARKETS = ("BTC/USDT", "ETH/USDT", "ETH/BTC")
NAME = model_name("binance:BTC/USDT:1h")
HOUR = 3_600_000


@pytest.fixture(scope="module")
def engine(stack: Stack) -> sa.Engine:
    return create_engine(stack.db_url)


def test_the_stored_candles_are_the_ones_the_simulator_served_minus_quarantined_rows(
    stack: Stack, engine: sa.Engine
) -> None:
    exchange = exchange_client(stack.simulator)
    for symbol in MARKETS:
        with engine.connect() as conn:
            stored = {
                int(r[0]): tuple(r[1:])
                for r in conn.execute(
                    sa.text(
                        "SELECT ts, open, high, low, close, volume FROM ohlcv "
                        "WHERE symbol = :s AND timeframe = '1h'"
                    ),
                    {"s": symbol},
                )
            }
            quarantined = dict(
                conn.execute(
                    sa.text(
                        "SELECT ts, reason FROM ohlcv_quarantine "
                        "WHERE symbol = :s AND timeframe = '1h'"
                    ),
                    {"s": symbol},
                ).all()
            )
        assert len(stored) >= 60 * 24 - 48, f"{symbol}: only {len(stored)} candles stored"
        assert all(reason for reason in quarantined.values()), "a quarantined row has no reason"
        start, end = min(stored), max(stored) + HOUR
        served: dict[int, tuple] = {}
        since = start
        while since < end:
            page = exchange.fetch_ohlcv(symbol, "1h", since, 1000)
            page = [row for row in page if row[0] < end]
            if not page:
                break
            served.update({int(r[0]): tuple(float(x) for x in r[1:]) for r in page})
            since = int(page[-1][0]) + HOUR
        kept = {ts: row for ts, row in served.items() if ts not in quarantined}
        assert set(stored) == set(kept), f"{symbol}: stored and served candles differ"
        for ts, row in kept.items():
            assert stored[ts] == pytest.approx(row), f"{symbol} {ts}"


def test_a_champion_exists_and_its_onnx_passes_verification(
    stack: Stack, engine: sa.Engine, tmp_path
) -> None:
    champion = alias(engine, NAME)
    assert champion is not None
    verified = load_verified(engine, NAME, int(champion["version"]), tmp_path)
    assert verified.sha256 == champion["sha256"]


def test_the_trader_decides_and_paper_trades_with_the_champion(
    stack: Stack, engine: sa.Engine
) -> None:
    version = int(alias(engine, NAME)["version"])
    deadline = time.monotonic() + 180
    while True:
        with engine.connect() as conn:
            decided = conn.execute(
                sa.text(
                    "SELECT model_name, model_version, outcome, client_order_id FROM decisions "
                    "WHERE account = 'paper'"
                )
            ).all()
            orders = conn.execute(
                sa.text("SELECT status FROM orders WHERE account = 'paper'")
            ).all()
        if len(decided) >= 3 and orders:
            break
        assert time.monotonic() < deadline, f"decisions {decided}, orders {orders}"
        time.sleep(2)
    assert {(d[0], d[1]) for d in decided} == {(NAME, version)}
    assert {d[2] for d in decided} <= {"order", "hold", "denied"}
    assert {o[0] for o in orders} <= {"filled", "expired"}


def assert_ready_or_halted_by_its_watch(response: httpx.Response) -> None:
    """Ready, or paused by the champion watch alone: the README's documented answer when
    the few minutes of paper trading fall deeper than the demo model's backtest made usual
    (the simulator replays recorded hours that depend on the day the test runs)."""
    if response.status_code == 200:
        return
    reasons = response.json()["reasons"]
    assert response.status_code == 503, response.text
    assert reasons, response.text
    assert all(WATCH_REASON in reason for reason in reasons), response.text


def test_the_trader_is_ready_or_paused_only_by_its_champion_watch(stack: Stack) -> None:
    ready = httpx.get(f"{stack.trader}/readyz", timeout=10)
    assert_ready_or_halted_by_its_watch(ready)
    assert ready.json()["models"][NAME]["provider"] == "CPUExecutionProvider"
    metrics = httpx.get(f"{stack.trader}/metrics", timeout=10).text
    assert "cryptobots_decisions_total" in metrics


def test_a_second_run_resumes_without_duplicate_data_or_a_second_training(
    stack: Stack, engine: sa.Engine
) -> None:
    """Last: stops the shared stack (Ctrl-C), starts `make run` again on the same var/."""

    def counts() -> dict:
        with engine.connect() as conn:
            return {
                "versions": conn.execute(sa.text("SELECT count(*) FROM model_versions")).scalar(),
                "runs": conn.execute(sa.text("SELECT count(*) FROM training_runs")).scalar(),
                "candles": dict(
                    conn.execute(
                        sa.text("SELECT symbol, count(*) FROM ohlcv GROUP BY symbol")
                    ).all()
                ),
            }

    assert stack.stop() == 0
    before = counts()
    second = start(stack.argv, stack.env, stack.output)
    try:
        after = counts()
        text = stack.text()
        assert text.count("training skipped: binance-btc-usdt-1h already has champion") == 1
        assert after["versions"] == before["versions"]
        assert after["runs"] == before["runs"]
        for symbol, n in before["candles"].items():
            assert n <= after["candles"][symbol] <= n + 2  # at most the hours since then
        assert_ready_or_halted_by_its_watch(httpx.get(f"{stack.trader}/readyz", timeout=10))
    finally:
        stack.process = second
        stack.stopped = False
