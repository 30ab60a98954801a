"""`python -m serving` from a new user's first try: every flag and setting is checked
before anything is taken or started (a port in use, a market the exchange does not list,
a malformed flag: exit 2 naming what was typed, no lease taken); an exchange that does not
answer is waited for with a warning naming the fix; SIGTERM at any moment stops it with
exit 0; and the trader's role (active or standby) reads the same on /readyz, /metrics and
`make run`'s status line, from the first answer on and across a takeover."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from pipeline.exchanges.simulator.app import Running, SimulatorConfig, create_app
from pipeline.ops.console import status_line
from pipeline.ops.deployment import free_port
from pipeline.settings import Settings, load_settings
from serving.cli import main
from serving.kernel.http import create_app as trader_app
from serving.startup import build, build_arbitrage, claim
from tests.support.paths import REPO

MARKET = "binance:BTC/USDT:1h"
SYMBOLS = ("BTC/USDT", "ETH/USDT", "ETH/BTC")
FAILOVER = {"failover_seconds": 1.5, "loop_seconds": 0.05}  # a lease lasts 1 s


def taken_leases(engine: Engine) -> list[tuple[str, str]]:
    """(market, holder) of every lease row someone holds."""
    with engine.connect() as conn:
        found = conn.execute(
            sa.text("SELECT market, holder FROM trader_leases WHERE holder <> ''")
        ).all()
    return [tuple(row) for row in found]


@pytest.fixture
def daemon_env(
    fresh_pg: Callable[[], Engine],
    simulator: Callable[..., AbstractContextManager[Running]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Engine]:
    """This process's settings for an in-process `main()`: a fresh migrated Postgres, the
    simulator; yields the engine."""
    engine = fresh_pg()
    with simulator(shift_to_now=True) as sim:
        monkeypatch.setenv("CRYPTOBOTS_VAR_DIR", str(tmp_path / "var"))
        monkeypatch.setenv("CRYPTOBOTS_DB_URL", engine.url.render_as_string(hide_password=False))
        monkeypatch.setenv("CRYPTOBOTS_EXCHANGES__BINANCE__URL", sim.url)
        monkeypatch.setenv("CRYPTOBOTS_MARKETS", MARKET)
        yield engine


# -- 2. the port ----------------------------------------------------------------------


@pytest.mark.parametrize("given", ["flag", "env"])
def test_a_port_in_use_is_refused_before_the_lease_is_taken(
    daemon_env: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    given: str,
) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        busy = other.getsockname()[1]
        argv = ["--port", str(busy)] if given == "flag" else []
        if given == "env":
            monkeypatch.setenv("CRYPTOBOTS_SERVING__PORT", str(busy))
        started = time.monotonic()
        assert main(argv) == 2
    assert time.monotonic() - started < 5
    error = capsys.readouterr().err
    assert "Running upgrade" not in error, "refused before the database is touched"
    named = f"--port {busy}" if given == "flag" else f"CRYPTOBOTS_SERVING__PORT={busy}"
    assert f"error: {named}: port {busy} on 127.0.0.1 is in use" in error
    assert "0 picks a free port" in error
    assert "Traceback" not in error
    assert taken_leases(daemon_env) == []


# -- 4. a market the exchange does not list -------------------------------------------


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--market", "binance:FOO/BAR:1h"], {}, "--market binance:FOO/BAR:1h"),
        (
            [],
            {"CRYPTOBOTS_MARKETS": "binance:FOO/BAR:1h"},
            "markets (CRYPTOBOTS_MARKETS; the trader trades the first): binance:FOO/BAR:1h",
        ),
    ],
    ids=["flag", "setting"],
)
def test_a_market_the_exchange_does_not_list_is_refused_naming_what_was_typed(
    daemon_env: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    env: dict[str, str],
    named: str,
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main([*argv, "--port", "0"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the log lines
    assert error.startswith(f"error: {named}"), error
    assert "binance does not list FOO/BAR" in error
    assert "trade a symbol it lists, e.g. BTC/USDT" in error
    assert taken_leases(daemon_env) == []


# -- 3 and 5. an exchange that does not answer; SIGTERM while waiting -----------------


def subprocess_env(tmp_path: Path, exchange_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOBOTS_")}
    return env | {
        "CRYPTOBOTS_VAR_DIR": str(tmp_path / "var"),
        "CRYPTOBOTS_EXCHANGES__BINANCE__URL": exchange_url,
        "CRYPTOBOTS_MARKETS": MARKET,
    }


@contextmanager
def trader_process(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with log.open("w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "serving", "--port", "0", "--log-format", "json"],
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


def log_lines(log: Path) -> list[dict[str, Any]]:
    lines = []
    for line in log.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


def wait_for_line(log: Path, pattern: str, process: subprocess.Popen, seconds: float = 60):
    deadline = time.monotonic() + seconds
    while True:
        for line in log_lines(log):
            if re.search(pattern, line["message"]):
                return line
        assert process.poll() is None, f"the trader exited\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {pattern!r} line\n{log.read_text()[-3000:]}"
        time.sleep(0.1)


@contextmanager
def simulator_on(port: int, data_dir: Path) -> Iterator[str]:
    """The exchange simulator on `port` (the one a trader was told and waits for)."""
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    app = create_app(SimulatorConfig(data_dir=data_dir, shift_to_now=True))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def test_a_trader_whose_exchange_does_not_answer_warns_with_the_fix_then_trades_once_it_does(
    tmp_path: Path, data_dir: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "trader.log"
    with trader_process(subprocess_env(tmp_path, url), log) as trader:
        started = time.monotonic()
        warning = wait_for_line(log, "nothing answers", trader)
        assert warning["level"] == "WARNING"
        assert url in warning["message"]
        assert "CRYPTOBOTS_EXCHANGES__BINANCE__URL" in warning["message"]
        assert "simulator" in warning["message"]
        time.sleep(1)
        assert trader.poll() is None, "the daemon waits, it does not give up"
        with simulator_on(port, data_dir):
            ready = wait_for_line(log, r"trading binance:BTC/USDT:1h .*readiness", trader)
            health = re.search(r"(http://\S+)/healthz", ready["message"])
            assert health is not None
            assert httpx.get(f"{health.group(1)}/healthz", timeout=5).status_code == 200
            trader.send_signal(signal.SIGTERM)
            assert trader.wait(timeout=30) == 0
    print(f"warned {warning['time']} ({time.monotonic() - started:.1f} s after the start)")


def test_sigterm_while_the_trader_waits_for_the_exchange_stops_it_with_exit_0(
    tmp_path: Path,
) -> None:
    log = tmp_path / "trader.log"
    env = subprocess_env(tmp_path, f"http://127.0.0.1:{free_port()}")
    with trader_process(env, log) as trader:
        wait_for_line(log, "nothing answers", trader)
        trader.send_signal(signal.SIGTERM)
        assert trader.wait(timeout=15) == 0
    messages = [line["message"] for line in log_lines(log)]
    assert "SIGTERM: finishing the current step, then stopping" in messages
    assert messages[-1] == "stopped"


def test_the_first_contact_with_an_exchange_that_does_not_answer_fails_fast_naming_the_fix(
    tmp_path: Path,
) -> None:
    """`python -m pipeline backfill` (a one-shot command) against no exchange."""
    url = f"http://127.0.0.1:{free_port()}"
    env = subprocess_env(tmp_path, url)
    argv = ["--market", MARKET, "--start", "2024-01-01", "--end", "2024-01-02"]
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "backfill", *argv],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("error: binance: load markets: nothing answers at " + url)
    assert "CRYPTOBOTS_EXCHANGES__BINANCE__URL" in error
    assert elapsed < 30, f"took {elapsed:.0f} s"


# -- 1. the role: /readyz, /metrics and the status line agree --------------------------


def read_role(app: Any) -> tuple[str, float, str]:
    """(/readyz's role, /metrics' cryptobots_trader_active, make run's status line)."""
    with TestClient(app) as client:
        ready = client.get("/readyz").json()
        metrics = client.get("/metrics").text
    found = re.search(r"^cryptobots_trader_active (\S+)$", metrics, re.MULTILINE)
    assert found is not None, metrics
    return ready["role"], float(found.group(1)), status_line(ready, [])


def take_over(standby: Any) -> None:
    """The active trader froze past its lease (1 s, not renewed meanwhile); the standby's
    loop then takes it over."""
    deadline = time.monotonic() + 10
    while not standby.role.active:
        assert time.monotonic() < deadline, "the standby never took the lease over"
        time.sleep(0.1)
        standby.step()


@pytest.fixture
def pair_env(
    fresh_pg: Callable[[], Engine],
    simulator: Callable[..., AbstractContextManager[Running]],
    tmp_path: Path,
) -> Iterator[tuple[Engine, Callable[..., Settings]]]:
    engine = fresh_pg()
    with simulator(shift_to_now=True, consistent_books=True) as sim:

        def settings(standby: bool) -> Settings:
            return load_settings(
                var_dir=tmp_path / ("standby" if standby else "active"),
                db_url=engine.url.render_as_string(hide_password=False),
                exchanges={"binance": {"ccxt_id": "binance", "url": sim.url}},
                markets=[MARKET],
                serving={**FAILOVER, "standby": standby},
                arbitrage={"symbols": SYMBOLS, "poll_seconds": 0.05},
            )

        yield engine, settings


@pytest.mark.parametrize("strategy", ["model", "arbitrage"])
def test_the_trader_holding_the_lease_reports_active_and_the_standby_not_until_it_takes_over(
    pair_env: tuple[Engine, Callable[..., Settings]], strategy: str
) -> None:
    engine, settings = pair_env
    make = build_arbitrage if strategy == "arbitrage" else build
    first_settings, second_settings = settings(False), settings(True)
    first = make(first_settings, live=False, environ={})
    claim(first, first_settings)
    second = make(second_settings, live=False, environ={})
    claim(second, second_settings)
    first_app = trader_app(first, None)
    second_app = trader_app(second, None)
    try:
        role, active, line = read_role(first_app)
        assert (role, active) == ("active", 1.0), "the first /metrics answer already says so"
        assert not line.startswith("trader standing by")
        role, active, line = read_role(second_app)
        assert (role, active) == ("standby", 0.0)
        assert line.startswith("trader standing by (standby: ")

        take_over(second)
        assert first.lease.renew() is False  # what its renewer finds when it wakes up

        role, active, line = read_role(second_app)
        assert (role, active) == ("active", 1.0)
        assert not line.startswith("trader standing by")
        role, active, line = read_role(first_app)
        assert (role, active) == ("standby", 0.0)
        assert line.startswith("trader standing by")
        assert [holder for _, holder in taken_leases(engine)] == [second.lease.holder] * len(
            second.lease.markets
        )
    finally:
        for trader in (first, second):
            trader.engine.dispose()
