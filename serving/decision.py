"""Pure bookkeeping of one trader decision (no I/O, no state): the position it leaves."""

from __future__ import annotations

import dataclasses
from typing import Any

from serving import store


def position_after(
    position: store.Position,
    outcome: str,
    target: float,
    order: dict[str, Any] | None,
    execution: store.Execution | None,
    live: bool,
) -> store.Position | None:
    """The position after a decision, known before its write (its equity point then goes
    into the decision's own transaction, one per decision) but for a live order: None,
    the exchange has yet to tell its fills."""
    if order is not None and live:
        return None  # the exchange's answer moves it: read back after sending
    after = (
        dataclasses.replace(position, target=target) if outcome in ("order", "hold") else position
    )
    if order is not None and execution is not None:
        return store.moved(after, order["side"], execution)
    return after
