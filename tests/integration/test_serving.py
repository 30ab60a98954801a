"""The trader against the exchange simulator over HTTP, state in a real Postgres."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy.engine import Engine

from pipeline.exchanges.simulator.app import Running
from pipeline.learn.export import Lineage, export_onnx
from pipeline.learn.features import FeatureSpec
from pipeline.learn.rl.networks import q_network
from pipeline.models.registry import alias, model_name, move_alias, register, set_metrics
from pipeline.settings import Settings
from serving.kernel.broker import PaperBroker
from serving.model import equity_store, store
from serving.model.metrics import Metrics
from serving.model.policy import CPU, AliasNotifications, ModelWatch
from serving.model.risk import RiskGate
from serving.model.trader import Trader
from serving.model.watch import max_drawdown
from tests.support.exchange import exchange_client
from tests.support.paths import REPO
from tests.support.policies import MARKET, NAME, SPEC, exported_policy
from tests.support.trading import SPEED, rows, run_until


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("policies")
    return [exported_policy(folder, seed) for seed in (3, 4)]


@pytest.fixture
def registry(fresh_pg, policies: list[Path], tmp_path: Path) -> tuple[Engine, str, list[int]]:
    """A migrated Postgres with two registered versions; the first is champion."""
    engine = fresh_pg()
    root = f"file://{tmp_path / 'artifacts'}"
    versions = [register(engine, root, path, NAME) for path in policies]
    move_alias(engine, NAME, versions[0], seen_generation=None, who="test", reason="first")
    return engine, root, versions


@pytest.fixture
def clock_sim(
    simulator: Callable[..., AbstractContextManager[Running]],
) -> Iterator[Running]:
    with simulator(shift_to_now=True, speed=SPEED) as sim:
        yield sim


def settings_for(engine: Engine, sim: Running, tmp_path: Path, **serving: object) -> Settings:
    return Settings(
        var_dir=tmp_path / "var",
        db_url=engine.url.render_as_string(hide_password=False),
        exchanges={"binance": {"ccxt_id": "binance", "url": sim.url}},
        markets=[MARKET],
        serving={"loop_seconds": 0.05, "model_poll_seconds": 0.1, **serving},
    )


def paper_trader(settings: Settings, engine: Engine, sim: Running) -> Trader:
    exchange = exchange_client(sim.url)
    return Trader(
        settings=settings,
        engine=engine,
        exchanges={"binance": exchange},
        brokers={"binance": PaperBroker(exchange, settings.serving.fee_bps)},
        watches={NAME: ModelWatch(engine, NAME, settings.var_dir / "models", [CPU])},
        risk=RiskGate(settings.serving.risk, [MARKET]),
        metrics=Metrics(),
    )


def decided(engine: Engine) -> int:
    return rows(engine, "SELECT count(*) FROM decisions")[0][0]


def test_paper_trading_decides_every_closed_candle_and_swaps_the_model_between_decisions(
    registry: tuple[Engine, str, list[int]], clock_sim: Running, tmp_path: Path
) -> None:
    engine, _, (first, second) = registry
    trader = paper_trader(settings_for(engine, clock_sim, tmp_path), engine, clock_sim)
    run_until(trader, lambda: decided(engine) >= 4, 60)
    generation = alias(engine, NAME)["generation"]
    move_alias(engine, NAME, second, seen_generation=generation, who="test", reason="swap")
    run_until(trader, lambda: decided(engine) >= 9, 60)

    history = rows(
        engine,
        "SELECT candle_ts, model_version, outcome, client_order_id, latency_ms "
        "FROM decisions ORDER BY candle_ts",
    )
    hour = 3_600_000
    assert [b[0] - a[0] for a, b in itertools.pairwise(history)] == [hour] * (len(history) - 1), (
        "a closed candle went undecided"
    )
    versions = [h[1] for h in history]
    assert versions[0] == first
    assert versions[-1] == second
    assert versions == sorted(versions), "decisions after the swap used the old model"
    for _candle_ts, _, outcome, cid, _ in history:
        if outcome == "order":
            [(status,)] = rows(engine, f"SELECT status FROM orders WHERE client_order_id = '{cid}'")
            assert status == "filled"
    [(base, quote)] = rows(engine, "SELECT base, quote FROM positions")
    filled = rows(
        engine,
        "SELECT side, filled, average, fee, fee_currency FROM orders WHERE status = 'filled'",
    )
    expected_base = sum(
        (f if s == "buy" else -f) - (fee if cur == "base" else 0) for s, f, _, fee, cur in filled
    )
    assert base == pytest.approx(expected_base, abs=1e-12)
    expected_quote = 10_000 - sum(
        (f * a if s == "buy" else -f * a) + (fee if cur == "quote" else 0)
        for s, f, a, fee, cur in filled
    )
    assert quote == pytest.approx(expected_quote, rel=1e-12)
    assert len(rows(engine, "SELECT ts FROM equity")) == len(history)


def test_a_restart_never_decides_a_candle_twice(
    registry: tuple[Engine, str, list[int]], clock_sim: Running, tmp_path: Path
) -> None:
    engine, _, _ = registry
    settings = settings_for(engine, clock_sim, tmp_path)
    first = paper_trader(settings, engine, clock_sim)
    run_until(first, lambda: decided(engine) >= 2, 60)
    again = paper_trader(settings, engine, clock_sim)
    again.step()
    run_until(again, lambda: decided(engine) >= 4, 60)
    candles = [r[0] for r in rows(engine, "SELECT candle_ts FROM decisions")]
    assert len(candles) == len(set(candles))


def test_a_restarted_trader_is_ready_at_once_when_its_last_decision_is_the_newest_candle(
    registry: tuple[Engine, str, list[int]], simulator, tmp_path: Path
) -> None:
    engine, _, _ = registry
    with simulator(shift_to_now=True) as sim:  # real time: the next candle is an hour away
        settings = settings_for(engine, sim, tmp_path)
        first = paper_trader(settings, engine, sim)
        run_until(first, lambda: decided(engine) >= 1, 60)
        again = paper_trader(settings, engine, sim)
        again.step()
        assert again.readiness() == (True, [])
    assert decided(engine) == 1


def test_readiness_reports_stale_data(
    registry: tuple[Engine, str, list[int]], clock_sim: Running, tmp_path: Path
) -> None:
    engine, _, _ = registry
    trader = paper_trader(settings_for(engine, clock_sim, tmp_path), engine, clock_sim)
    run_until(trader, lambda: decided(engine) >= 1, 60)
    state = trader.markets[MARKET]
    trader.exchange_now["binance"] = state.last_closed + 10 * 3_600_000
    ready, reasons = trader.readiness()
    assert not ready
    assert reasons == [f"{MARKET}: newest candle {state.last_closed} is stale at "
                       f"{state.last_closed + 10 * 3_600_000}"]  # fmt: skip


def test_a_stale_candle_is_warned_about_once_not_on_every_poll(
    registry: tuple[Engine, str, list[int]], clock_sim: Running, tmp_path: Path, caplog
) -> None:
    engine, _, _ = registry
    risk = {"stale_after_timeframes": 1e-9}  # every closed candle is stale at once
    trader = paper_trader(settings_for(engine, clock_sim, tmp_path, risk=risk), engine, clock_sim)
    with caplog.at_level(logging.WARNING, logger="serving.trader"):
        for _ in range(20):
            trader.step()
    warned = [r.getMessage() for r in caplog.records if "is stale" in r.getMessage()]
    candles = {int(message.split()[4]) for message in warned}
    assert 1 <= len(warned) == len(candles) < 20
    stale = trader.metrics.stale.labels(MARKET)._value.get()
    assert stale == len(warned)


def test_a_corrupt_champion_is_refused_and_the_running_model_keeps_trading(
    registry: tuple[Engine, str, list[int]], clock_sim: Running, tmp_path: Path
) -> None:
    engine, _, (first, second) = registry
    trader = paper_trader(settings_for(engine, clock_sim, tmp_path), engine, clock_sim)
    run_until(trader, lambda: decided(engine) >= 1, 60)
    [(uri,)] = rows(engine, f"SELECT artifact_uri FROM model_versions WHERE version = {second}")
    path = Path(uri.removeprefix("file://"))
    path.write_bytes(path.read_bytes()[:-64] + b"\0" * 64)
    generation = alias(engine, NAME)["generation"]
    move_alias(engine, NAME, second, seen_generation=generation, who="ops", reason="x", forced=True)
    before = decided(engine)
    run_until(trader, lambda: decided(engine) >= before + 2, 60)
    assert trader.watches[NAME].current().version == first
    assert "checksum mismatch" in trader.watches[NAME].refused[second]
    assert {r[0] for r in rows(engine, "SELECT model_version FROM decisions")} == {first}


def test_a_promotion_notified_by_postgres_swaps_before_the_next_poll(
    registry: tuple[Engine, str, list[int]], clock_sim: Running, tmp_path: Path
) -> None:
    engine, _, versions = registry
    settings = settings_for(engine, clock_sim, tmp_path, model_poll_seconds=3600)
    trader = paper_trader(settings, engine, clock_sim)
    trader.notifications = AliasNotifications(engine)
    try:
        trader.step()  # the first poll: v1, and the listener starts
        assert trader.watches[NAME].current().version == versions[0]
        polled = trader.last_model_poll
        move_alias(engine, NAME, versions[1], seen_generation=1, who="test", reason="notify")
        run_until(trader, lambda: trader.watches[NAME].current().version == versions[1], 10)
    finally:
        trader.notifications.close()
    assert trader.last_model_poll == polled  # no scheduled poll ran: the notification did it


HEAVY = ("tensorflow", "keras", "tf2onnx", "airflow", "great_expectations", "pandas", "torch")


def test_the_slim_environment_has_none_of_the_heavy_packages(slim_python: str) -> None:
    for name in HEAVY:
        found = subprocess.run(
            [slim_python, "-c", f"import {name}"], capture_output=True, text=True, cwd=REPO
        )
        assert found.returncode != 0, f"{name} is importable in the slim environment"
        assert "ModuleNotFoundError" in found.stderr


def test_the_daemon_runs_from_serving_requirements_alone_serves_health_and_stops_on_sigterm(
    registry: tuple[Engine, str, list[int]], clock_sim: Running, tmp_path: Path, slim_python: str
) -> None:
    engine, _, _ = registry
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOBOTS_")}
    env |= {
        "CRYPTOBOTS_VAR_DIR": str(tmp_path / "var"),
        "CRYPTOBOTS_DB_URL": engine.url.render_as_string(hide_password=False),
        "CRYPTOBOTS_EXCHANGES__BINANCE__URL": clock_sim.url,
        "CRYPTOBOTS_MARKETS": MARKET,
        "CRYPTOBOTS_SERVING__PORT": "0",
        "CRYPTOBOTS_SERVING__LOOP_SECONDS": "0.1",
        "CRYPTOBOTS_SERVING__CONTROL_TOKEN": "s3cret-token",
    }
    process = subprocess.Popen(
        [slim_python, "-m", "serving", "--log-format", "text"],
        env=env,
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = None
        lines = []
        deadline = time.monotonic() + 120
        while base is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            assert line or process.poll() is None, "".join(lines)
            lines.append(line)
            if match := re.search(r"health (http://\S+)/healthz", line):
                base = match.group(1)
        assert base, "".join(lines)
        assert httpx.get(f"{base}/healthz").json() == {"status": "alive"}
        ready = None
        while time.monotonic() < deadline:
            ready = httpx.get(f"{base}/readyz")
            if ready.status_code == 200:
                break
            time.sleep(0.2)
        assert ready.status_code == 200, ready.text
        assert ready.json()["models"][NAME]["provider"] == "CPUExecutionProvider"
        while "cryptobots_decisions_total{" not in httpx.get(f"{base}/metrics").text:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        metrics = httpx.get(f"{base}/metrics").text
        assert f'cryptobots_model_version{{model="{NAME}"}}' in metrics
        assert httpx.post(f"{base}/control/pause").status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.post(f"{base}/control/pause", headers=wrong).status_code == 401
        right = {"Authorization": "Bearer s3cret-token"}
        paused = httpx.post(f"{base}/control/pause", headers=right)
        assert paused.status_code == 200
        assert paused.json()["risk"]["global"]["state"] == "HALTED"
        assert httpx.post(f"{base}/control/resume", headers=right).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        output = "".join(lines) + process.stderr.read()
        assert "s3cret-token" not in output
        assert re.search(
            rf"model swapped: no model -> {NAME} v\d+ \(dqn, CPUExecutionProvider\)", output
        )
        assert "ONNX Runtime runs the models on CPUExecutionProvider" in output
        assert "[E:onnxruntime" not in output, "the CUDA probe is quiet"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert decided(engine) >= 1


def test_flatten_closes_the_position_even_while_paused(
    registry: tuple[Engine, str, list[int]], clock_sim: Running, tmp_path: Path
) -> None:

    engine, _, _ = registry
    trader = paper_trader(settings_for(engine, clock_sim, tmp_path), engine, clock_sim)
    run_until(trader, lambda: decided(engine) >= 1, 60)
    store.set_balances(engine, "paper", MARKET, 0.05, 5_000.0)
    trader.markets[MARKET].position = None
    trader.pause()
    trader.flatten()
    trader.step()
    [(base,)] = rows(engine, "SELECT base FROM positions")
    assert abs(base) < 1e-5, "more than one lot step left"
    [(side, status, decision_id)] = rows(
        engine, "SELECT side, status, decision_id FROM orders WHERE decision_id IS NULL"
    )
    assert (side, status, decision_id) == ("sell", "filled", None)
    assert trader.risk.state(MARKET) == "HALTED"


def test_a_paper_short_pays_borrow_interest_each_candle_and_is_liquidated_past_its_margin(
    registry: tuple[Engine, str, list[int]], clock_sim: Running, tmp_path: Path
) -> None:

    engine, _, _ = registry
    settings = settings_for(engine, clock_sim, tmp_path, borrow_rate_hourly=0.001)
    trader = paper_trader(settings, engine, clock_sim)
    run_until(trader, lambda: decided(engine) >= 1, 60)
    trader.pause()  # decisions are denied: only interest and liquidation move the account
    price = rows(engine, "SELECT price FROM decisions")[0][0]
    store.set_balances(engine, "paper", MARKET, -0.01, 10_000.0 + 0.01 * price)
    trader.markets[MARKET].position = None
    before = decided(engine)
    run_until(trader, lambda: decided(engine) >= before + 3, 60)
    [(base, quote, carried)] = rows(engine, "SELECT base, quote, carried_to FROM positions")
    assert base == -0.01
    paid = 10_000.0 + 0.01 * price - quote
    assert paid == pytest.approx(3 * 0.01 * price * 0.001, rel=0.5)
    assert carried is not None

    store.set_balances(engine, "paper", MARKET, -0.01, 0.01 * price * 1.05)  # 5% margin
    trader.markets[MARKET].position = None
    before = decided(engine)
    run_until(trader, lambda: decided(engine) >= before + 1, 60)
    [(base,)] = rows(engine, "SELECT base FROM positions")
    assert base == pytest.approx(0.0, abs=1e-12)
    [(side, status)] = rows(
        engine, "SELECT side, status FROM orders WHERE decision_id IS NULL AND side = 'buy'"
    )
    assert (side, status) == ("buy", "filled")


def test_one_trader_trades_several_markets_each_with_its_own_champion(
    registry: tuple[Engine, str, list[int]],
    policies: list[Path],
    clock_sim: Running,
    tmp_path: Path,
) -> None:
    engine, root, _ = registry
    eth = "binance:ETH/USDT:1h"
    eth_name = model_name(eth)
    version = register(engine, root, policies[1], eth_name)
    move_alias(engine, eth_name, version, seen_generation=None, who="test", reason="eth")
    settings = settings_for(engine, clock_sim, tmp_path, markets=[MARKET, eth])
    exchange = exchange_client(clock_sim.url)
    trader = Trader(
        settings=settings,
        engine=engine,
        exchanges={"binance": exchange},
        brokers={"binance": PaperBroker(exchange, settings.serving.fee_bps)},
        watches={
            name: ModelWatch(engine, name, settings.var_dir / "models", [CPU])
            for name in (NAME, eth_name)
        },
        risk=RiskGate(settings.serving.risk, [MARKET, eth]),
        metrics=Metrics(),
    )

    def per_market() -> dict[str, int]:
        return dict(rows(engine, "SELECT market, count(*) FROM decisions GROUP BY market"))

    run_until(trader, lambda: min(per_market().get(m, 0) for m in (MARKET, eth)) >= 2, 60)
    models = dict(rows(engine, "SELECT DISTINCT market, model_name FROM decisions"))
    assert models == {MARKET: NAME, eth: eth_name}
    assert len(rows(engine, "SELECT market FROM positions")) == 2


def export_always_long(
    path: Path,
    spec: FeatureSpec = SPEC,
    sizing: dict | None = None,
    scores: tuple[float, float] = (0.0, 10.0),
    algorithm: str = "dqn",
    position_rule: str = "argmax",
) -> Path:
    """A policy whose scores (flat, long) are always `scores`: by default Q-values that
    always prefer long, a model bad on purpose in a fall."""
    model = q_network(spec.dim + 1, 2, spec.mean, spec.std, seed=5)
    head = model.get_layer("q_values")
    head.set_weights([np.zeros_like(head.get_weights()[0]), np.array(scores, np.float32)])
    lineage = Lineage(
        algorithm,
        spec,
        (0.0, 1.0),
        f"run-{path.stem}",
        {"market": MARKET, "valid": [1, 2], "decision_every": 1},
        "test",
        sizing=sizing,
        position_rule=position_rule,
    )
    return export_onnx(model, lineage, path)


def test_a_volatility_targeted_champion_holds_its_scaled_position_without_churning(
    fresh_pg, clock_sim: Running, tmp_path: Path
) -> None:
    spec = FeatureSpec(features=("ret_1", "vol_168"), mean=(0.0, 0.0), std=(0.01, 0.01))
    sizing = {"target": 0.05, "feature": "vol_168", "max_scale": 1.0}
    path = export_always_long(tmp_path / "sized.onnx", spec, sizing)
    engine = fresh_pg()
    version = register(engine, f"file://{tmp_path / 'artifacts'}", path, NAME)
    move_alias(engine, NAME, version, seen_generation=None, who="test", reason="sized")
    trader = paper_trader(settings_for(engine, clock_sim, tmp_path), engine, clock_sim)
    run_until(trader, lambda: decided(engine) >= 4, 60)

    targets = [t for (t,) in rows(engine, "SELECT target FROM decisions ORDER BY candle_ts")]
    assert all(0 < t < 0.5 for t in targets), targets  # BTC's weekly vol is far above 5%
    [(base, quote)] = rows(engine, "SELECT base, quote FROM positions")
    [(price,)] = rows(engine, "SELECT price FROM decisions ORDER BY candle_ts DESC LIMIT 1")
    held = base * price / (base * price + quote)
    assert held == pytest.approx(targets[-1], rel=0.05)
    sells = rows(engine, "SELECT count(*) FROM orders WHERE side = 'sell'")[0][0]
    assert sells <= len(targets) - 1, "a held long must not be sold out and bought back"


def test_an_expected_position_champion_holds_its_probability_of_long_as_its_position(
    fresh_pg, clock_sim: Running, tmp_path: Path
) -> None:
    logits = (0.0, float(np.log(0.3 / 0.7)))  # p(long) = 0.3, inside the risk gate's caps
    path = export_always_long(
        tmp_path / "split.onnx", scores=logits, algorithm="a2c", position_rule="expected"
    )
    engine = fresh_pg()
    version = register(engine, f"file://{tmp_path / 'artifacts'}", path, NAME)
    move_alias(engine, NAME, version, seen_generation=None, who="test", reason="split")
    trader = paper_trader(settings_for(engine, clock_sim, tmp_path), engine, clock_sim)
    run_until(trader, lambda: decided(engine) >= 3, 60)

    targets = [t for (t,) in rows(engine, "SELECT target FROM decisions ORDER BY candle_ts")]
    assert targets == pytest.approx([0.3] * len(targets), abs=1e-6)
    [(base, quote)] = rows(engine, "SELECT base, quote FROM positions")
    [(price,)] = rows(engine, "SELECT price FROM decisions ORDER BY candle_ts DESC LIMIT 1")
    assert base * price / (base * price + quote) == pytest.approx(0.3, rel=0.05)


def promoted_always_long(engine: Engine, tmp_path: Path, after: int | None) -> int:
    """An always-long champion whose backtest promised almost no drawdown."""
    root = f"file://{tmp_path / 'artifacts'}"
    version = register(engine, root, export_always_long(tmp_path / "long.onnx"), NAME)
    expectations = {
        "horizons": [5, 20, 60],
        "drawdown": [1e-5, 1e-5, 1e-5],
        "quantile": 0.95,
        "source": "a promise too good",
    }
    set_metrics(engine, NAME, version, {"expectations": expectations})
    current = alias(engine, NAME)
    move_alias(
        engine,
        NAME,
        version,
        seen_generation=None if current is None else current["generation"],
        who="test",
        reason="bad on purpose",
    )
    assert (current or {}).get("version") == after
    return version


def test_a_champion_beyond_its_backtests_drawdown_is_rolled_back_by_the_watchdog(
    registry: tuple[Engine, str, list[int]], clock_sim: Running, tmp_path: Path
) -> None:
    engine, _, (first, _) = registry
    bad = promoted_always_long(engine, tmp_path, after=first)
    trader = paper_trader(settings_for(engine, clock_sim, tmp_path), engine, clock_sim)
    watchdog = "SELECT from_version, to_version, action, reason, gates FROM promotion_events "
    watchdog += "WHERE who = 'watchdog'"
    run_until(trader, lambda: bool(rows(engine, watchdog)), 90)

    [(from_version, to_version, action, reason, gates)] = rows(engine, watchdog)
    assert (from_version, to_version, action) == (bad, first, "rollback")
    assert "beyond" in reason
    assert "a promise too good" in reason
    assert gates["watch"]["breached"] is True
    assert gates["watch"]["drawdown"] > gates["watch"]["limit"]
    assert alias(engine, NAME)["version"] == first
    run_until(trader, lambda: trader.watches[NAME].current().version == first, 30)
    decided_before = decided(engine)
    run_until(trader, lambda: decided(engine) > decided_before, 30)
    newest = "SELECT model_version FROM decisions ORDER BY candle_ts DESC LIMIT 1"
    [(latest,)] = rows(engine, newest)
    assert latest == first


def test_without_an_earlier_champion_the_watch_flattens_and_pauses(
    fresh_pg, clock_sim: Running, tmp_path: Path
) -> None:
    engine = fresh_pg()
    promoted_always_long(engine, tmp_path, after=None)
    trader = paper_trader(settings_for(engine, clock_sim, tmp_path), engine, clock_sim)
    run_until(trader, lambda: trader.risk.snapshot()["global"]["operator_paused"], 90)
    trader.step()
    [(base,)] = rows(engine, "SELECT base FROM positions")
    assert abs(base) < 1e-5, "more than one lot step left"

    ready, reasons = trader.readiness()
    assert not ready
    assert any("champion watch" in r and "beyond" in r for r in reasons)
    assert rows(engine, "SELECT count(*) FROM promotion_events WHERE who = 'watchdog'") == [(0,)]
    assert trader.status()["markets"][MARKET]["watch"]["breached"] is True
    trader.resume()
    assert not any("champion watch" in r for r in trader.readiness()[1])


def test_after_a_resume_a_restarted_watch_judges_only_what_came_after(
    fresh_pg, clock_sim: Running, tmp_path: Path
) -> None:
    engine = fresh_pg()
    version = promoted_always_long(engine, tmp_path, after=None)
    trader = paper_trader(settings_for(engine, clock_sim, tmp_path), engine, clock_sim)
    run_until(trader, lambda: trader.risk.snapshot()["global"]["operator_paused"], 90)
    assert equity_store.watch_resumed_at(engine, "paper") is None, "paused, not yet resumed"
    trader.resume()
    trader.step()  # records the resume
    resumed = equity_store.watch_resumed_at(engine, "paper")
    assert resumed is not None

    whole = equity_store.equity_since_version(engine, "paper", MARKET, NAME, version)
    since = equity_store.equity_since_version(engine, "paper", MARKET, NAME, version, since=resumed)
    assert len(whole) >= 2, "the breach needed a fall"
    assert 1 <= len(since) < len(whole)
    assert since == whole[len(whole) - len(since) :], "the tail of the record, from the resume"


def test_the_watchs_running_record_is_the_equity_on_record_since_the_version_took_over(
    registry: tuple[Engine, str, list[int]], clock_sim: Running, tmp_path: Path
) -> None:
    engine, _, (first, _) = registry
    trader = paper_trader(settings_for(engine, clock_sim, tmp_path), engine, clock_sim)
    run_until(trader, lambda: decided(engine) >= 5, 60)

    state = trader.markets[MARKET]
    equity = equity_store.equity_since_version(engine, "paper", MARKET, NAME, first)
    assert state.watch_record.decisions == len(equity) - 1 >= 4
    assert state.watch_record.drawdown == max_drawdown(equity)
    assert state.verdict is not None
    assert state.verdict.decisions == state.watch_record.decisions
    restarted = paper_trader(settings_for(engine, clock_sim, tmp_path), engine, clock_sim)
    run_until(restarted, lambda: restarted.markets[MARKET].verdict is not None, 30)
    record = restarted.markets[MARKET].watch_record  # seeded from the database once
    equity = equity_store.equity_since_version(engine, "paper", MARKET, NAME, first)
    assert (record.drawdown, record.decisions) == (max_drawdown(equity), len(equity) - 1)


class ServesOne:
    """A model watch that always serves one policy, registered or not."""

    def __init__(self, policy: object) -> None:
        self.policy = policy

    def current(self) -> object:
        return self.policy

    def poll(self) -> object:
        return self.policy


def test_a_champion_unknown_to_the_registry_leaves_the_watch_blind_and_trading_on(
    registry: tuple[Engine, str, list[int]],
    clock_sim: Running,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine, _, (first, _) = registry
    settings = settings_for(engine, clock_sim, tmp_path, watch_max_drawdown=1e-9)
    loaded = ModelWatch(engine, NAME, settings.var_dir / "models", [CPU]).poll()
    assert loaded is not None
    assert loaded.version == first
    trader = paper_trader(settings, engine, clock_sim)
    trader.watches = {NAME: ServesOne(dataclasses.replace(loaded, version=999))}
    with caplog.at_level(logging.WARNING, logger="serving.trader"):
        run_until(trader, lambda: decided(engine) >= 3, 60)

    verdict = trader.markets[MARKET].verdict
    assert verdict is not None
    assert verdict.blind
    assert not verdict.breached, "a blind watch never acts, not even on the configured limit"
    assert verdict.decisions >= 2
    blind = [r for r in caplog.records if "v999" in r.getMessage()]
    assert len(blind) == 1, "said once for the version"
    assert not trader.risk.snapshot()["global"]["operator_paused"]
    assert rows(engine, "SELECT count(*) FROM promotion_events WHERE who = 'watchdog'") == [(0,)]
