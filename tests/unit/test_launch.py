"""The launcher's parts that need no database: the history window, process supervision, the
run state file, which exchanges get a simulator."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from pipeline.errors import ConfigurationError, CryptobotsError
from pipeline.ops.airflow_api import admin_password
from pipeline.ops.children import Children
from pipeline.ops.console import status_line
from pipeline.ops.launch import Options, check_history, simulator_port
from pipeline.ops.run_state import load_state, save_state
from pipeline.settings import Settings
from pipeline.tasks.market_data import history_range

HOUR, DAY = 3_600_000, 86_400_000
TREE = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(child.pid, flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is gone too
        return stat.read().split()[2] != "Z"


def test_history_ends_at_the_last_closed_hour_unless_told() -> None:
    now = 1_700_000_000_000 + 1234
    assert history_range(2, None, now) == (now // HOUR * HOUR - 2 * DAY, now // HOUR * HOUR)
    start, end = history_range(1, "2020-01-02T00:00")
    assert (start, end) == (1_577_836_800_000, 1_577_923_200_000)


def test_stopping_the_children_ends_their_whole_process_trees(tmp_path: Path) -> None:
    children = Children(tmp_path / "logs")
    parent = children.start("tree", [sys.executable, "-c", TREE], os.environ)
    log = tmp_path / "logs" / "tree.log"
    deadline = time.monotonic() + 30
    while not log.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    grandchild = int(log.read_text().split()[0])
    assert alive(grandchild)
    assert children.stop(timeout=10) == []
    deadline = time.monotonic() + 5  # a killed process takes a moment to be gone
    while alive(parent.pid) or alive(grandchild):
        assert time.monotonic() < deadline, "a process of the tree survived"
        time.sleep(0.05)


def test_a_child_that_ignores_sigterm_is_killed_and_named(tmp_path: Path) -> None:
    children = Children(tmp_path / "logs")
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(600)"
    )
    process = children.start("stubborn", [sys.executable, "-c", stubborn], os.environ)
    log = tmp_path / "logs" / "stubborn.log"
    while "up" not in log.read_text():
        time.sleep(0.1)
    assert children.stop(timeout=1) == ["stubborn"]
    assert process.returncode == -signal.SIGKILL


def test_a_child_that_died_is_reported_with_its_log(tmp_path: Path) -> None:
    children = Children(tmp_path / "logs")
    children.start("short", [sys.executable, "-c", "raise SystemExit(3)"], os.environ)
    time.sleep(1.0)
    with pytest.raises(CryptobotsError, match=r"short exited with code 3.*short\.log"):
        children.check()
    children.stop()


def test_only_a_loopback_exchange_gets_a_simulator(tmp_path: Path) -> None:
    local = Settings(var_dir=tmp_path)
    assert simulator_port(local) == 8900
    remote = Settings(var_dir=tmp_path, exchanges={"binance": {"ccxt_id": "binance", "url": None}})
    assert simulator_port(remote) is None


def test_the_run_state_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "run" / "state.json"
    assert load_state(path) == {}
    save_state(path, {"history_end": "2026-11-26T13:00:00+00:00"})
    assert load_state(path) == {"history_end": "2026-11-26T13:00:00+00:00"}


def test_the_admin_password_is_read_from_airflows_file(tmp_path: Path) -> None:
    path = tmp_path / "passwords.json"
    path.write_text('{"admin": "s3cret"}')
    assert admin_password(path) == "s3cret"


def test_a_history_too_short_for_the_promotion_window_is_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    settings = Settings(var_dir=tmp_path, promotion={"window_days": 90})
    with pytest.raises(ConfigurationError, match=r"--history-days 100 is too short.*121"):
        check_history(settings, Options(history_days=100, train_days=7, valid_days=2))
    check_history(settings, Options(history_days=121, train_days=7, valid_days=2))


def test_the_status_line_reads_as_one_human_line_per_trader() -> None:
    status = {"ready": True, "reasons": [], "risk": {"global": {"state": "ACTIVE"}}}
    book = {
        "market": "binance:BTC/USDT:1h",
        "base": 0.05,
        "quote": 8_000.0,
        "candle_ts": 1_615_680_000_000,  # 2021-03-14 00:00 UTC
        "outcome": "order",
        "target": 0.3,
        "price": 40_000.0,
        "model_name": "binance-btc-usdt-1h",
        "model_version": 3,
    }
    assert status_line(status, [book]) == (
        "trader ready | binance:BTC/USDT:1h: equity 10,000.00 USDT, position 0.05 BTC (20%), "
        "last decision 2021-03-14 00:00 order -> 30%, champion binance-btc-usdt-1h v3 "
        "| risk ACTIVE"
    )


def test_the_status_line_says_why_the_trader_is_not_ready() -> None:
    status = {"ready": False, "reasons": ["binance:BTC/USDT:1h: no champion model loaded"]}
    fresh = {"market": "binance:BTC/USDT:1h", "base": 0.0, "quote": 10_000.0, "price": None}
    line = status_line(status, [fresh])
    assert line.startswith("trader NOT ready (binance:BTC/USDT:1h: no champion model loaded)")
    assert "10,000.00 USDT, no decision yet" in line
    assert "{" not in line
