"""The simulator's rate limiter and fault plan on their own: 429 then 418 past the budget,
no ban for a client that honours Retry-After, faults reproducible from the seed."""

from __future__ import annotations

from pipeline.exchanges.simulator.faults import FaultPlan, WeightLimiter


def test_past_the_budget_429_then_418_for_a_client_that_keeps_going() -> None:
    clock = [60.0]
    limiter = WeightLimiter(budget=10, ban_after=2, ban_seconds=120, clock=lambda: clock[0])
    assert [limiter.charge(4).status for _ in range(2)] == [200, 200]
    refused = limiter.charge(4)
    assert (refused.status, refused.retry_after) == (429, 60)
    assert limiter.charge(4).status == 429  # came back before Retry-After: one violation
    assert limiter.charge(4).status == 418  # and again: banned
    clock[0] += 121
    assert limiter.charge(4).status == 200


def test_a_client_that_honours_retry_after_is_never_banned() -> None:
    clock = [0.0]
    limiter = WeightLimiter(budget=10, clock=lambda: clock[0])
    statuses = []
    for _ in range(20):
        verdict = limiter.charge(4)
        statuses.append(verdict.status)
        clock[0] += verdict.retry_after if verdict.status == 429 else 0.1
    assert 418 not in statuses
    assert 429 in statuses


def test_faults_are_reproducible_from_the_seed() -> None:
    plans = [FaultPlan(rate=0.3, seed=seed) for seed in (7, 7, 8)]
    draws = [[plan.draw("/api/v3/klines") for _ in range(200)] for plan in plans]
    assert draws[0] == draws[1] != draws[2]
    assert set(draws[0]) - {None}
