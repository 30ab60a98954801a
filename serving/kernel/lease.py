"""One active trader per market: a lease row per (account, market) with a fencing token.

A trader takes the leases of every market it trades before it trades, and a thread of
its own renews them while the process lives. One that stops renewing (killed, frozen,
cut off from the database) loses them `ttl` later; a standby then takes them over with
the token + 1 and reconciles with the exchange before its first order. Every order
write checks, in the same statement, that the writer's token is still the lease's
(the model trader's decisions and orders, the arbitrage trader's legs), so a frozen
old leader that wakes up cannot write an order, and an order it cannot write is never
sent.

Times are the hosts' own clocks in epoch milliseconds (keep them in NTP sync); the
margin between a lease's expiry and the renewals (every ttl / 3) absorbs small skew.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipeline.db.schema import trader_leases
from pipeline.errors import ConfigurationError, CryptobotsError

if TYPE_CHECKING:
    from prometheus_client import Gauge

log = logging.getLogger("serving.lease")


class LeaseLost(CryptobotsError):
    """Another trader holds the lease now: nothing is written or sent."""


class LeaseHeld(ConfigurationError):
    """Another live trader holds the markets' lease and this one is no standby."""


class _Held(Exception):
    """A market's lease is someone else's (rolls the transaction back)."""


def holder_id() -> str:
    """This process, as a lease names its holder: host, pid and a nonce."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class Lease:
    """The leases of one trader's markets on one account."""

    engine: Engine
    account: str
    markets: Sequence[str]
    ttl_seconds: float
    holder: str = field(default_factory=holder_id)
    clock: Callable[[], float] = time.time
    tokens: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def held(self) -> bool:
        """Whether this trader holds every market's lease (as far as it knows)."""
        with self._lock:
            return len(self.tokens) == len(self.markets)

    def describe(self) -> dict[str, object]:
        """JSON-able, for /readyz: who this trader is and the tokens it holds."""
        with self._lock:
            tokens = dict(self.tokens)
        return {"holder": self.holder, "held": len(tokens) == len(self.markets), "tokens": tokens}

    def token(self, market: str) -> int | None:
        with self._lock:
            return self.tokens.get(market)

    def fence(self) -> tuple[str, dict[str, int]]:
        """(holder, token per market) for writes that span every market of the lease;
        LeaseLost when it is not held whole."""
        with self._lock:
            tokens = dict(self.tokens)
        if len(tokens) != len(self.markets):
            raise LeaseLost(f"{self.account}: this trader does not hold the lease of its markets")
        return self.holder, tokens

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def acquire(self) -> bool:
        """Take every market's lease that is free or expired (keeping those held); True
        when all are held. Takes none unless it can take all, so two traders with the
        same markets never split them."""
        now = self._now_ms()
        expires = now + int(self.ttl_seconds * 1000)
        taken: dict[str, int] = {}
        try:
            with self.engine.begin() as conn:
                taken = self._take(conn, now, expires)
        except _Held:
            return False
        with self._lock:
            changed = taken != self.tokens
            self.tokens = taken
        if changed:
            log.info("lease of %s taken by %s (tokens %s)", self.account, self.holder, taken)
        return True

    def _take(self, conn: Connection, now: int, expires: int) -> dict[str, int]:
        taken: dict[str, int] = {}
        for market in self.markets:
            _ensure_row(conn, self.account, market)
            row = conn.execute(
                sa.update(trader_leases)
                .where(
                    trader_leases.c.account == self.account,
                    trader_leases.c.market == market,
                    sa.or_(
                        trader_leases.c.expires_at < now,
                        trader_leases.c.holder == self.holder,
                    ),
                )
                .values(
                    holder=self.holder,
                    expires_at=expires,
                    token=sa.case(
                        (trader_leases.c.holder == self.holder, trader_leases.c.token),
                        else_=trader_leases.c.token + 1,
                    ),
                    acquired_at=sa.case(
                        (trader_leases.c.holder == self.holder, trader_leases.c.acquired_at),
                        else_=now,
                    ),
                )
                .returning(trader_leases.c.token)
            ).first()
            if row is None:
                raise _Held(market)  # rolls back: all or none
            taken[market] = int(row[0])
        return taken

    def take(self) -> str:
        """Take the leases (see `acquire`): "" when this trader holds them now, else who
        trades which market, for /readyz while it stands by."""
        if self.acquire():
            return ""
        held = sorted(self.holders().items())
        return ", ".join(f"{m} traded by {h}" for m, h in held) or "another trader holds it"

    def renew(self) -> bool:
        """Extend the held leases; False, forgetting them all, when any was taken over."""
        with self._lock:
            held = dict(self.tokens)
        if len(held) != len(self.markets):
            return False
        expires = self._now_ms() + int(self.ttl_seconds * 1000)
        try:
            with self.engine.begin() as conn:
                self._extend(conn, held, expires)
        except _Held as taken:
            self.drop(f"{taken.args[0]}'s lease was taken over")
            return False
        return True

    def _extend(self, conn: Connection, held: dict[str, int], expires: int) -> None:
        for market, token in held.items():
            if not conn.execute(self._mine(market, token).values(expires_at=expires)).rowcount:
                raise _Held(market)

    def _mine(self, market: str, token: int) -> sa.Update:
        """An update of the market's lease row while this trader holds it with `token`."""
        return sa.update(trader_leases).where(
            trader_leases.c.account == self.account,
            trader_leases.c.market == market,
            trader_leases.c.holder == self.holder,
            trader_leases.c.token == token,
        )

    def drop(self, why: str) -> None:
        """Forget the leases (they were lost): trade nothing until they are taken again."""
        with self._lock:
            was, self.tokens = self.tokens, {}
        if was:
            log.warning("lease of %s lost by %s: %s; standing by", self.account, self.holder, why)

    def release(self) -> None:
        """Hand the leases back at once (a clean stop): a standby needs not wait for ttl."""
        with self._lock:
            held, self.tokens = self.tokens, {}
        if not held:
            return
        with self.engine.begin() as conn:
            for market, token in held.items():
                conn.execute(self._mine(market, token).values(expires_at=0))

    def holders(self) -> dict[str, str]:
        """Who holds each market's lease now (expired ones are marked so)."""
        now = self._now_ms()
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    trader_leases.c.market, trader_leases.c.holder, trader_leases.c.expires_at
                )
                .where(trader_leases.c.account == self.account)
                .where(trader_leases.c.market.in_(list(self.markets)))
            ).all()
        return {
            market: holder if expires >= now else f"{holder} (expired)"
            for market, holder, expires in rows
            if holder
        }


def require_lease(conn: Connection, account: str, holder: str, tokens: dict[str, int]) -> None:
    """LeaseLost unless `holder` still holds every market of `tokens` with its token; the
    rows stay locked (shared) until the transaction ends, so a takeover waits for it."""
    held = conn.execute(
        sa.select(trader_leases.c.market, trader_leases.c.token)
        .where(
            trader_leases.c.account == account,
            trader_leases.c.market.in_(list(tokens)),
            trader_leases.c.holder == holder,
        )
        .with_for_update(read=True)
    ).all()
    if {market: int(token) for market, token in held} != tokens:
        lost = sorted(set(tokens) - {m for m, t in held if tokens.get(m) == int(t)})
        raise LeaseLost(
            f"{', '.join(lost)} ({account}): this trader's lease was taken over by another "
            "trader: nothing written, nothing sent"
        )


def _ensure_row(conn: Connection, account: str, market: str) -> None:
    """The market's lease row, free, unless it exists."""
    exists = conn.execute(
        sa.select(sa.literal(1))
        .select_from(trader_leases)
        .where(trader_leases.c.account == account, trader_leases.c.market == market)
    ).first()
    if exists is None:
        values = {"account": account, "market": market, "holder": "", "token": 0}
        values |= {"expires_at": 0, "acquired_at": 0}
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        conn.execute(insert(trader_leases).values(**values).on_conflict_do_nothing())


class Role:
    """Whether a trader trades now, read from its lease at the moment it is asked: the one
    answer its /readyz (`role`), its `cryptobots_trader_active` gauge and `make run`'s
    status line give. Active while it holds every market's lease (or trades without a
    lease), standby otherwise."""

    def __init__(self, lease: Lease | None, gauge: Gauge) -> None:
        self.lease = lease
        self.standing_by = ""  # who holds the lease, as this trader last found it
        gauge.set_function(lambda: 1.0 if self.active else 0.0)

    @property
    def active(self) -> bool:
        """True while this trader holds its markets' lease (or has none to hold)."""
        return self.lease is None or self.lease.held

    @property
    def name(self) -> str:
        """`active` or `standby`."""
        return "active" if self.active else "standby"

    def hold(self, on_takeover: Callable[[], None]) -> bool:
        """Whether this trader may trade now: it holds the lease, or took it just now
        (then `on_takeover` runs first: settle with the exchange before anything is sent)."""
        if self.active:
            return True
        assert self.lease is not None
        self.standing_by = self.lease.take()
        if self.standing_by:
            return False
        on_takeover()
        return True

    def lost(self, error: LeaseLost) -> None:
        """A write found the lease taken over: stand by from now on."""
        if self.lease is not None:
            self.lease.drop(str(error))

    def reason(self) -> str | None:
        """Why /readyz is 503 on account of the lease (None while active)."""
        if self.active:
            return None
        return f"standby: {self.standing_by or 'the lease is not held yet'}"

    def describe(self) -> dict[str, Any] | None:
        """/readyz's `lease`: holder, held and tokens (None without a lease)."""
        return None if self.lease is None else self.lease.describe()


class Renewer(threading.Thread):
    """Renews a lease every ttl / 3 while the process lives; a frozen process freezes
    it too, so its lease expires, which is the point."""

    def __init__(self, lease: Lease, stop: threading.Event) -> None:
        super().__init__(name="lease-renewer", daemon=True)
        self.lease, self.stop = lease, stop

    def run(self) -> None:
        while not self.stop.wait(self.lease.ttl_seconds / 3):
            if not self.lease.held:
                continue
            try:
                self.lease.renew()
            except sa.exc.DBAPIError as error:
                log.warning("lease not renewed, the database did not answer: %s", error)
