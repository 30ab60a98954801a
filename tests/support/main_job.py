"""The main job as a user starts it (`python -m pipeline run`): its process, addresses
and output, and the processes it left."""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.paths import REPO

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
