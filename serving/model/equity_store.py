"""The model trader's equity points, one per market and candle, and the record the
champion watch judges: a version's equity since it took a market over, or since an
operator lifted the watch's pause.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipeline.db.schema import decisions, equity, risk_events
from serving.kernel.risk_state import RESUMED_REASON
from serving.model.store import Position
from serving.model.watch import WATCH_REASON


@dataclass(frozen=True)
class Mark:
    """A market's equity point at candle `ts`: its position valued at `price`."""

    ts: int
    position: Position
    price: float


def record_equity(
    engine: Engine, account: str, market: str, ts: int, position: Position, price: float
) -> None:
    """One equity point per market and candle (a repeat of the same candle is ignored)."""
    with engine.begin() as conn:
        record_mark(conn, account, market, Mark(ts, position, price))


def record_mark(conn: Connection, account: str, market: str, mark: Mark) -> None:
    exists = conn.execute(
        sa.select(equity.c.ts).where(
            equity.c.account == account, equity.c.market == market, equity.c.ts == mark.ts
        )
    ).first()
    if exists is None:
        conn.execute(sa.insert(equity).values(account=account, market=market, **mark_values(mark)))


def mark_values(mark: Mark, prefix: str = "") -> dict[str, Any]:
    """The equity row's values of an equity point (keys prefixed with `prefix`)."""
    position = mark.position
    return {
        f"{prefix}ts": mark.ts,
        f"{prefix}equity": position.equity(mark.price),
        f"{prefix}base": position.base,
        f"{prefix}quote": position.quote,
        f"{prefix}price": mark.price,
    }


def equity_since_version(
    engine: Engine,
    account: str,
    market: str,
    name: str,
    version: int,
    since: datetime | None = None,
) -> list[float]:
    """Equity points of `market` since `version` of `name` most recently took over its
    decisions: the point before its first decision, then one per decision. With `since`
    (an operator's resume after a watch breach, see `watch_resumed_at`), the record
    starts at the last point before it instead."""
    with engine.connect() as conn:
        other = conn.execute(
            sa.select(sa.func.max(decisions.c.candle_ts)).where(
                decisions.c.account == account,
                decisions.c.market == market,
                sa.or_(decisions.c.model_name != name, decisions.c.model_version != version),
            )
        ).scalar()
        first = conn.execute(
            sa.select(sa.func.min(decisions.c.candle_ts)).where(
                decisions.c.account == account,
                decisions.c.market == market,
                decisions.c.model_name == name,
                decisions.c.model_version == version,
                decisions.c.candle_ts > (other if other is not None else -1),
            )
        ).scalar()
        if first is None:
            return []
        before = conn.execute(
            sa.select(equity.c.equity, equity.c.created_at)
            .where(equity.c.account == account, equity.c.market == market, equity.c.ts < first)
            .order_by(equity.c.ts.desc())
            .limit(1)
        ).first()
        points = conn.execute(
            sa.select(equity.c.equity, equity.c.created_at)
            .where(equity.c.account == account, equity.c.market == market, equity.c.ts >= first)
            .order_by(equity.c.ts)
        ).all()
    record = ([] if before is None else [before]) + list(points)
    if since is not None:
        earlier = [i for i, (_, at) in enumerate(record) if _naive(at) < _naive(since)]
        record = record[earlier[-1] :] if earlier else record
    return [float(value) for value, _ in record]


def watch_resumed_at(engine: Engine, account: str) -> datetime | None:
    """When an operator last lifted a pause that the champion watch had set, or None: the
    watch judges only what came after (a restart must not breach again on what the
    operator already saw)."""
    global_events = sa.and_(risk_events.c.account == account, risk_events.c.market.is_(None))
    with engine.connect() as conn:
        paused = conn.execute(
            sa.select(sa.func.max(risk_events.c.at)).where(
                global_events, risk_events.c.reason.like(f"{WATCH_REASON}%")
            )
        ).scalar()
        if paused is None:
            return None
        return conn.execute(
            sa.select(sa.func.min(risk_events.c.at)).where(
                global_events,
                risk_events.c.reason == RESUMED_REASON,
                risk_events.c.at >= paused,
            )
        ).scalar()


def _naive(at: datetime) -> datetime:
    return at.replace(tzinfo=None) if at.tzinfo is None else at.astimezone(UTC).replace(tzinfo=None)
