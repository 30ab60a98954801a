"""Driving a trader in-process and reading what it stored."""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from serving.model.trader import Trader

SPEED = 1800.0  # one simulated hour every two seconds


def rows(engine: Engine, sql: str) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql)).all()


def run_until(trader: Trader, condition: Callable[[], bool], seconds: float) -> None:
    """Step the trader until `condition` holds; fails after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        trader.step()
        time.sleep(trader.settings.serving.loop_seconds)
