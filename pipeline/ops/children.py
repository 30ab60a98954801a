"""The processes the launcher starts, and waiting on something while they run.

Each child runs in a session of its own, so stopping one stops its whole process tree;
its output goes to `<log_dir>/<name>.log`. A child that exits on its own ends any wait.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pipeline.errors import CryptobotsError
from pipeline.ops.console import say
from pipeline.settings import PROJECT_ROOT


class ChildDied(CryptobotsError):
    """A process the launcher started exited on its own."""


@dataclass
class Children:
    """The processes the launcher started, each in its own session (process group)."""

    log_dir: Path
    running: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: list[IO[str]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: Mapping[str, str]) -> subprocess.Popen:
        """Start `argv` as `name`, output to `<log_dir>/<name>.log`."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("a")
        self.logs.append(log)
        process = subprocess.Popen(
            argv,
            env=dict(env),
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.running[name] = process
        return process

    def check(self) -> None:
        """Raise ChildDied when a child exited, naming it and its log."""
        for name, process in self.running.items():
            if process.poll() is not None:
                raise ChildDied(
                    f"{name} exited with code {process.returncode}; its output is in "
                    f"{self.log_dir / (name + '.log')}"
                )

    def stop(self, timeout: float = 45.0) -> list[str]:
        """SIGTERM every child's process group (newest first), SIGKILL what is left after
        `timeout`; returns the names that had to be killed."""
        killed = []
        for process in reversed(list(self.running.values())):
            if process.poll() is None:
                _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, process in reversed(list(self.running.items())):
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                killed.append(name)
            _signal_group(process, signal.SIGKILL)  # stragglers of the tree, if any
            process.wait()
        self.running.clear()
        for log in self.logs:
            log.close()
        self.logs.clear()
        return killed


def _signal_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(process.pid, sig)


def wait_until(
    condition: Callable[[], bool],
    seconds: float,
    what: str,
    children: Children,
    progress: Callable[[], str | None] | None = None,
    every: float = 15.0,
) -> None:
    """Poll `condition` until true; fail after `seconds` or when a child dies."""
    deadline = time.monotonic() + seconds
    shown = time.monotonic()
    while not condition():
        children.check()
        if time.monotonic() > deadline:
            raise CryptobotsError(f"timed out after {seconds:.0f} s waiting for {what}")
        if progress is not None and time.monotonic() - shown >= every:
            shown = time.monotonic()
            line = progress()
            if line:
                say(f"  {line}")
        time.sleep(1.0)
