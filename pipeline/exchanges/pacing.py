"""Request pacing: keep each minute inside the request-weight budget the exchange states.

The budget comes from exchangeInfo's rateLimits (read by the client); the weight of each
kind of request is learned from the used-weight header. ccxt's own throttle stays on
underneath.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping


class WeightPacer:
    """Keeps requests inside the weight budget an exchange states per minute.

    The weight of each kind of request is learned from the used-weight header (its
    rise across the request), so the pacer follows what the exchange charges, not
    what a client library assumes. Before a request, if the minute's used weight
    plus this request (and one more, for other clients of the same key) would pass
    the budget, it waits for the next minute; otherwise the request goes at once,
    under ccxt's own throttle. A 429 that still happens (clock skew, other clients)
    is retried after its Retry-After, never sooner, so the exchange never bans us.
    """

    def __init__(
        self,
        header: str | None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.header = header
        self.clock = clock
        self.sleep = sleep
        self.budget: int | None = None
        self.weights: dict[str, int] = {}
        self.used = 0
        self.window = -1
        self.waited = 0.0

    def before(self, kind: str) -> None:
        """Sleep until a request of `kind` fits the minute's budget."""
        if not self.budget:
            return
        now = self.clock()
        weight = self.weights.get(kind, 1)
        if int(now // 60) == self.window and self.used + 2 * weight > self.budget:
            pause = 60 - now % 60 + 0.05
            self.waited += pause
            self.sleep(pause)

    def after(self, kind: str, headers: Mapping[str, str] | None) -> None:
        """Learn the used weight and this kind's weight from the response headers."""
        used = _header_int(headers, self.header)
        if used is None:
            return
        window = int(self.clock() // 60)
        if window == self.window and used > self.used:
            self.weights[kind] = used - self.used
        elif window != self.window or used < self.used:
            self.weights.setdefault(kind, used)
        self.window, self.used = window, used


def _header_int(headers: Mapping[str, str] | None, name: str | None) -> int | None:
    if not headers or not name:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        return int(lowered[name])
    except (KeyError, ValueError):
        return None
