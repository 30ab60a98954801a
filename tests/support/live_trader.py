"""A live trader process over the simulator's signed endpoints, as the crash and the
failover tests run it: the champion it trades, its environment, the process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy.engine import Engine

from pipeline.exchanges.simulator.app import Running
from pipeline.models.registry import move_alias, register
from tests.support.paths import REPO
from tests.support.policies import MARKET, NAME, exported_policy


def promote_champion(engine: Engine, tmp_path: Path, reason: str) -> str:
    """Register and promote a small exported policy; returns the artifact root."""
    root = f"file://{tmp_path / 'artifacts'}"
    version = register(engine, root, exported_policy(tmp_path, seed=3), NAME)
    move_alias(engine, NAME, version, seen_generation=None, who="test", reason=reason)
    return root


def live_env(engine: Engine, sim: Running, key: str, secret: str) -> dict[str, str]:
    """This process's environment without its CRYPTOBOTS_* settings, plus a live trader's
    on `MARKET` with the simulator's keys (`key`, `secret`) and a fast loop."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOBOTS_")}
    return env | {
        "CRYPTOBOTS_DB_URL": engine.url.render_as_string(hide_password=False),
        "CRYPTOBOTS_EXCHANGES__BINANCE__URL": sim.url,
        "CRYPTOBOTS_EXCHANGES__BINANCE__CREDENTIALS": "env:SIMKEYS",
        "CRYPTOBOTS_TRADING_MODE": "live",
        "SIMKEYS_API_KEY": key,
        "SIMKEYS_SECRET": secret,
        "CRYPTOBOTS_MARKETS": MARKET,
        "CRYPTOBOTS_SERVING__PORT": "0",
        "CRYPTOBOTS_SERVING__RISK__MAX_ORDERS_PER_HOUR": "1000",
    }


def start_trader(env: dict[str, str], log: Path) -> subprocess.Popen:
    """`python -m serving --live`, its output appended to `log`."""
    return subprocess.Popen(
        [sys.executable, "-m", "serving", "--live", "--log-format", "text"],
        env=env,
        cwd=REPO,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
    )


def exchange_books(sim: Running, key: str) -> tuple[float, float]:
    """(BTC, USDT) the simulator's account of `key` holds."""
    balances = dict(sim.exchange.accounts.account(key).balances)
    return balances.get("BTC", 0.0), balances["USDT"]
