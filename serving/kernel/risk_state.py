"""Risk states and their transitions: the vocabulary both strategies' gates speak.

A gate queues a `Transition` on every change of state; its trader persists them
(`serving.kernel.risk_events`) and sets its risk-state gauge from `RISK_CODES`.
Stdlib only."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

RESUMED_REASON = "resumed by operator"
"""The reason of the transition an operator's resume records (risk_events)."""


class RiskState(StrEnum):
    """How much a market (or the whole trader) may trade; later members are worse."""

    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"


RISK_CODES = {"ACTIVE": 0, "REDUCING": 1, "HALTED": 2}
"""A state's value on the risk-state gauges."""

_SEVERITY = {RiskState.ACTIVE: 0, RiskState.REDUCING: 1, RiskState.HALTED: 2}


def worst(*states: RiskState) -> RiskState:
    """The worst of `states` (HALTED > REDUCING > ACTIVE)."""
    return max(states, key=_SEVERITY.__getitem__)


@dataclass(frozen=True)
class Transition:
    """One change of state, for the caller to persist."""

    market: str | None  # None = global
    from_state: RiskState
    to_state: RiskState
    reason: str
    at_ms: int
