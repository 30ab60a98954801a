"""The arbitrage trader's risk gate: the daily loss limit, cycles per hour and notional."""

from __future__ import annotations

from pipeline.settings import load_settings
from serving.arbitrage_risk import CycleGate


def test_gate_halts_for_the_day_at_the_loss_limit() -> None:
    gate = CycleGate(load_settings().arbitrage.model_copy(update={"daily_loss_limit": 5.0}), "a")
    now = 1_700_000_000_000
    assert gate.check(100.0, now) is None
    gate.finished(-6.0, leg_failed=True, now_ms=now)
    assert "daily loss" in (gate.check(100.0, now + 1) or "")
    assert gate.check(100.0, now + 86_400_000) is None


def test_gate_caps_cycles_per_hour_and_notional() -> None:
    settings = load_settings().arbitrage.model_copy(
        update={"max_cycles_per_hour": 2, "max_cycle_notional": 50.0}
    )
    gate = CycleGate(settings, "a")
    now = 1_700_000_000_000
    assert "max_cycle_notional" in (gate.check(60.0, now) or "")
    gate.started(now)
    gate.started(now + 1)
    assert "last hour" in (gate.check(10.0, now + 2) or "")
    assert gate.check(10.0, now + 3_600_001) is None
