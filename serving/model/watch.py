"""The champion watch: does the model trade the way its backtest said it would?

Training stores with each model version what its out-of-sample backtest makes usual:
for several horizons (a number of decisions), the 95th percentile of the maximum
drawdown over that many decisions, from a block bootstrap of the backtest's returns
(`pipeline.learn.evidence.drawdown_expectations`). While the version trades, the trader
follows the equity of each market since the version took over (its running peak and
deepest fall, a `RunningDrawdown`, updated in constant time per point) and `judge`s
it after every decision: a drawdown deeper than what the backtest made usual over the same
number of decisions (or than `serving.watch_max_drawdown`, whichever is lower) is a
breach. The trader then rolls back to the previous champion, or flattens and pauses
when there is none. Without a distribution and without a configured limit the watch
is blind: it says so, and never changes the champion on its own.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

WATCH_REASON = "champion watch: "
"""How every pause, rollback and readiness reason of the watch begins."""


@dataclass(frozen=True)
class Expectations:
    """What a version's backtest makes usual: drawdown quantiles per horizon."""

    horizons: tuple[int, ...]
    drawdown: tuple[float, ...]
    quantile: float
    source: str

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any] | None) -> Expectations | None:
        """The `expectations` a registered version's metrics hold, or None."""
        found = (metrics or {}).get("expectations")
        if not found or not found.get("horizons"):
            return None
        pairs = sorted(zip(found["horizons"], found["drawdown"], strict=True))
        return cls(
            horizons=tuple(int(h) for h, _ in pairs),
            drawdown=tuple(float(d) for _, d in pairs),
            quantile=float(found.get("quantile", 0.95)),
            source=str(found.get("source", "backtest")),
        )

    def limit(self, decisions: int) -> float:
        """The quantile for the shortest horizon of at least `decisions` (the longest
        horizon's beyond it): the deepest drawdown the backtest makes usual by then."""
        index = min(bisect_left(self.horizons, max(decisions, 1)), len(self.horizons) - 1)
        return self.drawdown[index]


@dataclass(frozen=True)
class Verdict:
    """One judgement of a champion's live record."""

    breached: bool
    blind: bool
    drawdown: float
    limit: float | None
    decisions: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: what the audit row records."""
        return asdict(self)


def max_drawdown(equity: Sequence[float]) -> float:
    """Largest fall from a running peak of `equity`, as a positive fraction."""
    values = np.asarray(equity, dtype=np.float64)
    if values.size < 2:
        return 0.0
    peak = np.maximum.accumulate(values)
    return float(np.max(1.0 - values / np.where(peak > 0, peak, 1.0)))


@dataclass
class RunningDrawdown:
    """`max_drawdown` of an equity record kept up to date one point at a time, in
    constant time per point: the running peak and the deepest fall from it so far.

    It computes exactly what `max_drawdown` computes over the whole record (the same
    float operations in the same order; a NaN point poisons it the same way)."""

    points: int = 0
    peak: float = math.nan
    deepest: float = 0.0  # the largest 1 - value / peak so far, the first point's included

    @classmethod
    def of(cls, equity: Iterable[float]) -> RunningDrawdown:
        """The running figures of a whole record."""
        running = cls()
        for value in equity:
            running.add(value)
        return running

    def add(self, value: float) -> None:
        """One more equity point."""
        value = float(value)
        first = self.points == 0
        self.peak = value if first else _max(self.peak, value)
        fall = 1.0 - value / (self.peak if self.peak > 0 else 1.0)
        self.deepest = fall if first else _max(self.deepest, fall)
        self.points += 1

    @property
    def drawdown(self) -> float:
        """The largest fall from a running peak so far, as a positive fraction."""
        return self.deepest if self.points >= 2 else 0.0

    @property
    def decisions(self) -> int:
        """Decisions judged: one point comes before the first decision."""
        return max(self.points - 1, 0)


def _max(a: float, b: float) -> float:
    """max that propagates a NaN from either side, as `np.maximum` does."""
    return a if a >= b or a != a else b


def judge(
    label: str,
    drawdown: float,
    decisions: int,
    expectations: Expectations | None,
    configured: float | None = None,
) -> Verdict:
    """Compare the `drawdown` of the equity since `label` took over, over `decisions`
    decisions (a `RunningDrawdown`'s figures), with its expectations and the configured
    limit."""
    limits: list[tuple[float, str]] = []
    if expectations is not None:
        limits.append(
            (
                expectations.limit(decisions),
                f"the {expectations.quantile:.0%} drawdown of {expectations.source} over "
                f"{decisions} decisions",
            )
        )
    if configured is not None:
        limits.append((configured, "serving.watch_max_drawdown"))
    if not limits:
        return Verdict(
            False,
            True,
            drawdown,
            None,
            decisions,
            f"{label} has no backtest drawdown distribution to watch against: retrain it "
            "(the train DAG stores one with every candidate) or set "
            "CRYPTOBOTS_SERVING__WATCH_MAX_DRAWDOWN",
        )
    limit, source = min(limits)
    breached = drawdown > limit
    relation = "beyond" if breached else "within"
    return Verdict(
        breached,
        False,
        drawdown,
        limit,
        decisions,
        f"{label}: drawdown {drawdown:.2%} over {decisions} decisions, {relation} "
        f"{limit:.2%} ({source})",
    )
