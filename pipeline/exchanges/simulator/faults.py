"""Request weight limits like Binance's, faults injected reproducibly from a seed, and
leg faults: the next orders on one market rejected, partly filled or delayed, on demand."""

from __future__ import annotations

import math
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

GENERIC_FAULTS = ("latency", "timeout", "429", "418", "500", "502", "503", "malformed", "drop")
KLINES_FAULTS = ("truncated", "repeat")
FAULT_KINDS = GENERIC_FAULTS + KLINES_FAULTS
LEG_FAULT_KINDS = ("reject", "partial", "delay", "refuse-borrow")

# Binance's request weights (GET unless noted); depth depends on its limit.
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
    "/api/v3/allOrders": 20,
    "/api/v3/myTrades": 20,
    "/sapi/v1/margin/account": 10,
    "/sapi/v1/margin/order": 6,
    "/sapi/v1/margin/openOrders": 10,
    "/sapi/v1/margin/allOrders": 200,
    "/sapi/v1/margin/myTrades": 10,
    "/sapi/v1/margin/maxBorrowable": 50,
}


CANDLE_PATHS = ("/api/v3/klines", "/0/public/OHLC")  # where truncated and repeat answers go


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


KRAKEN_COSTS = {  # what a call adds to Kraken's API counter (other calls: 1)
    "/0/private/TradesHistory": 2.0,
    "/0/private/Ledgers": 2.0,
    "/0/private/AddOrder": 0.0,  # orders have their own limits, not the API counter
    "/0/private/CancelOrder": 0.0,
}


@dataclass
class CounterLimiter:
    """Kraken's API counter: each call adds its cost to a counter per API key (public
    calls: one counter for every client), which decays by `decay` a second; a call
    that would take it past `limit` is refused. Kraken's tiers: 15 and 0.33 (Starter),
    20 and 0.5 (Intermediate), 20 and 1 (Pro)."""

    limit: float
    decay: float
    clock: object = time.time
    counters: dict[str, tuple[float, float]] = field(default_factory=dict)  # count, at
    refused: int = 0

    def charge(self, key: str, path: str) -> bool:
        """Whether a call to `path` by `key` is allowed (and counted)."""
        now = self.clock()  # type: ignore[operator]
        count, at = self.counters.get(key, (0.0, now))
        count = max(0.0, count - (now - at) * self.decay)
        cost = KRAKEN_COSTS.get(path, 1.0)
        if count + cost > self.limit:
            self.counters[key] = (count, now)
            self.refused += 1
            return False
        self.counters[key] = (count + cost, now)
        return True


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
        if self.rate == 0.0 or not path.startswith(("/api/", "/sapi/", "/0/")):
            return None
        roll, pick = self._rng.random(), self._rng.random()
        if roll >= self.rate:
            return None
        allowed = [k for k in self.kinds if k in GENERIC_FAULTS or path in CANDLE_PATHS]
        if not allowed:
            return None
        kind = allowed[int(pick * len(allowed))]
        self.injected[kind] += 1
        return kind

    def latency(self) -> float:
        low, high = self.latency_seconds
        return low + (high - low) * self._rng.random()


@dataclass(frozen=True)
class LegFault:
    """The next `count` order placements on `symbol` (Binance's id; ETH/BTC is accepted)
    get `kind`: `reject` refuses them for good, `partial` fills only `fraction` of the
    quantity (down to the lot step), `delay` holds each `seconds` of real time before
    it is matched, so that it lands after a client may have timed out. `refuse-borrow`
    is planted on an asset (`symbol` "BTC"), not a market: its next margin borrows are
    refused."""

    symbol: str
    kind: str
    count: int = 1
    fraction: float = 0.5
    seconds: float = 2.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "symbol", str(self.symbol).replace("/", "").upper())
        if self.kind not in LEG_FAULT_KINDS:
            raise ValueError(
                f"leg fault kind {self.kind!r} is unknown; known: {', '.join(LEG_FAULT_KINDS)}"
            )
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"leg fault count {self.count!r} is not a whole number >= 1")
        try:
            object.__setattr__(self, "fraction", float(self.fraction))
            object.__setattr__(self, "seconds", float(self.seconds))
        except (TypeError, ValueError):
            raise ValueError(
                f"leg fault fraction {self.fraction!r} and seconds {self.seconds!r} must be numbers"
            ) from None
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"leg fault fraction {self.fraction} is not in [0, 1)")
        if not (math.isfinite(self.seconds) and self.seconds >= 0):
            raise ValueError(f"leg fault seconds {self.seconds} is not >= 0")


@dataclass
class LegFaults:
    """Pending leg faults in the order they were added, and how many each kind got."""

    pending: list[tuple[LegFault, int]] = field(default_factory=list)
    consumed: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, fault: LegFault) -> None:
        """Queue `fault` behind those already pending."""
        with self._lock:
            self.pending.append((fault, fault.count))

    def take(self, symbol: str) -> LegFault | None:
        """The fault for the next order placement on `symbol` (one of its count), or None."""
        with self._lock:
            for i, (fault, left) in enumerate(self.pending):
                if fault.symbol == symbol:
                    if left > 1:
                        self.pending[i] = (fault, left - 1)
                    else:
                        del self.pending[i]
                    self.consumed[fault.kind] += 1
                    return fault
        return None

    def listing(self) -> list[dict[str, object]]:
        """The pending faults, `count` being what is left of each."""
        with self._lock:
            return [
                {
                    "symbol": f.symbol,
                    "kind": f.kind,
                    "count": left,
                    "fraction": f.fraction,
                    "seconds": f.seconds,
                }
                for f, left in self.pending
            ]

    def clear(self) -> None:
        """Drop every pending fault (the counts of consumed ones stay)."""
        with self._lock:
            self.pending.clear()
