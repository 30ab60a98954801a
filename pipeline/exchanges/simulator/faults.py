"""Request weight limits like Binance's, and faults injected reproducibly from a seed."""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field

GENERIC_FAULTS = ("latency", "timeout", "429", "418", "500", "502", "503", "malformed", "drop")
KLINES_FAULTS = ("truncated", "repeat")
FAULT_KINDS = GENERIC_FAULTS + KLINES_FAULTS

# Binance spot request weights (GET unless noted); depth depends on its limit.
WEIGHTS = {
    "/api/v3/ping": 1,
    "/api/v3/time": 1,
    "/api/v3/exchangeInfo": 20,
    "/api/v3/klines": 2,
    "/api/v3/ticker/bookTicker": 2,
    "/api/v3/ticker/24hr": 2,
    "/api/v3/ticker/price": 2,
    "/api/v3/account": 20,
    "/api/v3/order": 4,
    "/api/v3/openOrders": 6,
    "/api/v3/myTrades": 20,
}


def request_weight(path: str, query: dict[str, str]) -> int:
    """The weight Binance charges for a request (unknown paths cost 1)."""
    if path == "/api/v3/depth":
        limit = int(query.get("limit", "100") or 100)
        return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250
    return WEIGHTS.get(path, 1)


@dataclass
class Verdict:
    """What the limiter says about one request."""

    status: int  # 200 to proceed, 429 or 418 to refuse
    used: int
    retry_after: int = 0


@dataclass
class WeightLimiter:
    """A request-weight budget per calendar minute, answered past it with 429, then 418.

    A client that sends again before a 429's Retry-After has passed commits a
    violation; `ban_after` violations ban it (418) for `ban_seconds`.
    """

    budget: int = 6000
    ban_after: int = 2
    ban_seconds: int = 120
    clock: object = time.time
    window: int = -1
    used: int = 0
    retry_until: float = 0.0
    banned_until: float = 0.0
    violations: int = 0
    answered: Counter = field(default_factory=Counter)

    def charge(self, weight: int) -> Verdict:
        now = self.clock()  # type: ignore[operator]
        minute = int(now // 60)
        if minute != self.window:
            self.window, self.used = minute, 0
        if now < self.banned_until:
            return self._refuse(418, self.banned_until - now)
        if now < self.retry_until:
            self.violations += 1
            if self.violations >= self.ban_after:
                self.banned_until = now + self.ban_seconds
                return self._refuse(418, self.ban_seconds)
        if self.used + weight > self.budget:
            self.retry_until = (minute + 1) * 60
            return self._refuse(429, self.retry_until - now)
        self.used += weight
        self.violations = 0
        return Verdict(200, self.used)

    def _refuse(self, status: int, seconds: float) -> Verdict:
        self.answered[status] += 1
        return Verdict(status, self.used, max(1, math.ceil(seconds)))


@dataclass
class FaultPlan:
    """Which fault (if any) each request gets: a reproducible draw from `seed`."""

    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    seed: int = 0
    timeout_seconds: float = 5.0
    retry_after_seconds: int = 1
    latency_seconds: tuple[float, float] = (0.05, 0.3)
    injected: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds) - set(FAULT_KINDS))
        if unknown:
            raise ValueError(f"unknown fault kind(s) {unknown}; known: {', '.join(FAULT_KINDS)}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault rate {self.rate} is not between 0 and 1")
        self._rng = random.Random(self.seed)

    def draw(self, path: str) -> str | None:
        """The fault for the next request to `path`, or None."""
        if self.rate == 0.0 or not path.startswith("/api/"):
            return None
        roll, pick = self._rng.random(), self._rng.random()
        if roll >= self.rate:
            return None
        allowed = [k for k in self.kinds if k in GENERIC_FAULTS or path == "/api/v3/klines"]
        if not allowed:
            return None
        kind = allowed[int(pick * len(allowed))]
        self.injected[kind] += 1
        return kind

    def latency(self) -> float:
        low, high = self.latency_seconds
        return low + (high - low) * self._rng.random()
