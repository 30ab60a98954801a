"""Risk-gate transitions into `risk_events`, the one table both strategies record them in."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.db.schema import risk_events


def record_transitions(engine: Engine, account: str, transitions: Iterable[Any]) -> None:
    """Persist risk-gate transitions (objects with market, from_state, to_state, reason)."""
    rows = [
        {
            "account": account,
            "market": t.market,
            "from_state": str(t.from_state),
            "to_state": str(t.to_state),
            "reason": t.reason,
        }
        for t in transitions
    ]
    if rows:
        with engine.begin() as conn:
            conn.execute(sa.insert(risk_events), rows)
