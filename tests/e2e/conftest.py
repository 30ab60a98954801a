"""The main job started as a user starts it (`python -m pipeline run`, what `make run`
calls), headless, with short budgets and an accelerated simulator clock; shared by every
end-to-end test and stopped with Ctrl-C (SIGINT) at the end, where no process of it may
be left behind."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
READY_SECONDS = 1200
SPEED = 1800  # simulated seconds per second: a 1h candle closes every 2 s


@dataclass
class Stack:
    """The running main job: its folders, addresses and output so far."""

    process: subprocess.Popen
    var_dir: Path
    output: Path
    airflow: str
    trader: str
    simulator: str
    password: str
    env: dict[str, str]
    argv: list[str]
    exit_code: int | None = None
    stopped: bool = False

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.var_dir / 'cryptobots.db'}"

    def text(self) -> str:
        return self.output.read_text()

    def stop(self) -> int | None:
        """Ctrl-C, as a user stops it; the exit code (None: it had to be killed)."""
        if not self.stopped:
            self.stopped = True
            self.process.send_signal(signal.SIGINT)
            try:
                self.exit_code = self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.exit_code = None
        return self.exit_code


def start(argv: list[str], env: dict[str, str], output: Path) -> subprocess.Popen:
    """The main job's process, its output appended to `output`, once it printed `ready:`."""
    before = output.read_text().count("ready: ") if output.exists() else 0
    with output.open("a") as sink:
        process = subprocess.Popen(
            argv, env=env, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, text=True
        )
    deadline = time.monotonic() + READY_SECONDS
    while output.read_text().count("ready: ") == before:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the main job did not get ready:\n{output.read_text()[-5000:]}")
        time.sleep(2)
    return process


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def processes_of(var_dir: Path) -> list[tuple[int, str]]:
    """Live processes whose environment names `var_dir` (everything the job started)."""
    marker = f"CRYPTOBOTS_VAR_DIR={var_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            if (entry / "stat").read_text().split()[2] == "Z":
                continue
            found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ")))
        except OSError:
            continue
    return [(pid, cmd.decode(errors="replace")) for pid, cmd in found]


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
