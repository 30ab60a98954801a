"""A Stable-Baselines3 PPO policy, trained outside the pipeline by `examples/sb3_ppo.py`,
goes from `models register` to a paper trader's decisions with no code change: history
backfilled from the exchange simulator through ccxt, the example trains on it and
exports the contract-wrapped ONNX file, `models register` judges and stores it,
`models promote --force` makes it champion and `python -m serving` trades it on paper."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from pipeline.exchanges.simulator.app import Running
from pipeline.models.registry import list_versions
from tests.support.cli_env import pipeline_env
from tests.support.paths import REPO
from tests.support.services import require_bench_deps
from tests.support.trading import SPEED, rows

pytestmark = pytest.mark.postgres

MARKET = "binance:BTC/USDT:1h"
NAME = "binance-btc-usdt-1h"
FEATURES = "ret_1,ret_24,ret_168,rsi_14,vol_168"  # examples.sb3_ppo.FEATURES


@pytest.fixture
def sb3() -> None:
    require_bench_deps("stable_baselines3", "torch")


def command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", *args], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, f"{' '.join(args)}\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done


def test_an_sb3_ppo_policy_goes_from_register_to_a_paper_traders_decisions(
    sb3: None,
    fresh_pg: Callable[[], Engine],
    simulator: Callable[..., AbstractContextManager[Running]],
    tmp_path: Path,
) -> None:
    engine = fresh_pg()
    env = pipeline_env(
        engine, tmp_path, MARKET, training__folds="2", training__valid_days="20",
        serving__port="0", serving__loop_seconds="0.1",
    )  # fmt: skip
    with simulator(shift_to_now=True, speed=SPEED) as sim:
        env["CRYPTOBOTS_EXCHANGES__BINANCE__URL"] = sim.url
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        span = ["--start", (end - timedelta(days=110)).isoformat(), "--end", end.isoformat()]
        command(env, "pipeline", "backfill", "--market", MARKET, *span)
        trained = command(
            env, "examples.sb3_ppo", "--out", str(tmp_path / "ppo.onnx"),
            "--steps", "2048", "--days", "60",
        )  # fmt: skip
        assert f"--features {FEATURES} --action-map 0,1" in trained.stdout
        declared = ["--market", MARKET, "--features", FEATURES, "--action-map", "0,1"]
        command(env, "pipeline", "models", "register", str(tmp_path / "ppo.onnx"), *declared)
        [version] = list_versions(engine, NAME)
        assert version["algorithm"] == "external"
        assert len(version["metrics"]["walk_forward"]["folds"]) == 2
        reason = ["--force", "--reason", "the SB3 example"]
        command(env, "pipeline", "models", "promote", str(version["version"]), *reason)

        log = tmp_path / "trader.log"
        with log.open("w") as handle:
            trader = subprocess.Popen(
                [sys.executable, "-m", "serving", "--log-format", "text"],
                env=env, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while len(decisions(engine)) < 3:
                assert trader.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
            trader.send_signal(signal.SIGTERM)
            assert trader.wait(timeout=30) == 0, log.read_text()[-3000:]
        finally:
            if trader.poll() is None:
                trader.kill()
                trader.wait()
    output = log.read_text()
    assert re.search(
        rf"model swapped: no model -> {NAME} v1 \(external, CPUExecutionProvider\)", output
    )
    made = decisions(engine)
    assert {version for version, _ in made} == {1}, "every decision by the SB3 policy"
    assert {outcome for _, outcome in made} <= {"order", "hold"}, made
    assert rows(engine, "SELECT count(*) FROM positions WHERE account = 'paper'")[0][0] == 1


def decisions(engine: Engine) -> list[tuple[int, str]]:
    return [tuple(r) for r in rows(engine, "SELECT model_version, outcome FROM decisions")]
