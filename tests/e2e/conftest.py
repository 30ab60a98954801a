"""The main job started as a user starts it (`python -m pipeline run`, what `make run`
calls), headless, with short budgets and an accelerated simulator clock; shared by every
end-to-end test and stopped with Ctrl-C (SIGINT) at the end, where no process of it may
be left behind."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Iterator

import pytest

from pipeline.ops.deployment import free_port
from tests.support.main_job import SPEED, Stack, processes_of, start


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`python -m pipeline run` until it prints `ready:`; SIGINT afterwards, and then no
    process it started may be left."""
    var_dir = tmp_path_factory.mktemp("e2e") / "var"
    ports = {name: free_port() for name in ("airflow", "trader", "simulator")}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CRYPTOBOTS_"))}
    env |= {
        "CRYPTOBOTS_VAR_DIR": str(var_dir),
        "CRYPTOBOTS_EXCHANGES__BINANCE__URL": f"http://127.0.0.1:{ports['simulator']}",
        "CRYPTOBOTS_SERVING__LOOP_SECONDS": "0.2",
        "CRYPTOBOTS_SERVING__MODEL_POLL_SECONDS": "2",
        "CRYPTOBOTS_PROMOTION__WINDOW_DAYS": "20",
        # the browser test promotes a tiny demo model through the form: the gates' wiring
        "CRYPTOBOTS_PROMOTION__MIN_DSR": "0",
        # the recorded data's flash moves and the accelerated clock would only pause entries
        "CRYPTOBOTS_SERVING__RISK__FLASH_MOVE": "10",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
    }
    argv = [
        sys.executable, "-m", "pipeline", "run",
        "--history-days", "62", "--train-days", "20", "--valid-days", "5", "--folds", "2",
        "--algorithms", "dqn", "--dqn-steps", "5000", "--decision-every", "1",
        "--simulator-speed", str(SPEED), "--airflow-port", str(ports["airflow"]),
        "--trader-port", str(ports["trader"]), "--status-every", "5",
    ]  # fmt: skip
    output = var_dir.parent / "run.log"
    process = start(argv, env, output)
    password = re.search(r"login admin / (\S+)\)", output.read_text()).group(1)
    started = Stack(
        process=process,
        var_dir=var_dir,
        output=output,
        airflow=f"http://127.0.0.1:{ports['airflow']}",
        trader=f"http://127.0.0.1:{ports['trader']}",
        simulator=f"http://127.0.0.1:{ports['simulator']}",
        password=password,
        env=env,
        argv=argv,
    )
    try:
        yield started
    finally:
        code = started.stop()
        time.sleep(1)
        left = processes_of(var_dir)
        for pid, _ in left:
            os.kill(pid, signal.SIGKILL)
        assert code == 0, started.text()[-3000:]
        assert "stopped cleanly" in started.text()
        assert left == [], f"processes left behind: {left}"
