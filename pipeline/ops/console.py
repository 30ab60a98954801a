"""What the launcher prints: timestamped progress lines, and the line about the trader
(its readiness, then per market its book and last decision as the database has them)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any


def say(text: str) -> None:
    """One progress line, timestamped (the launcher's whole user interface)."""
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", flush=True)


def trader_books(engine: Any, account: str) -> list[dict[str, Any]]:
    """Per market of `account`: its position row and its newest decision (or None)."""
    import sqlalchemy as sa

    from pipeline.db.schema import decisions, positions

    newest = (
        sa.select(decisions.c.market, sa.func.max(decisions.c.id).label("id"))
        .where(decisions.c.account == account)
        .group_by(decisions.c.market)
        .subquery()
    )
    query = (
        sa.select(
            positions.c.market,
            positions.c.base,
            positions.c.quote,
            decisions.c.candle_ts,
            decisions.c.outcome,
            decisions.c.target,
            decisions.c.price,
            decisions.c.model_name,
            decisions.c.model_version,
        )
        .select_from(positions)
        .outerjoin(newest, newest.c.market == positions.c.market)
        .outerjoin(decisions, decisions.c.id == newest.c.id)
        .where(positions.c.account == account)
        .order_by(positions.c.market)
    )
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def status_line(status: Mapping[str, Any], books: list[dict[str, Any]]) -> str:
    """The console's line about the trader: ready or why not, then per market equity,
    position, last decision and champion, then the risk state (the JSON is /readyz, whose
    `role` says whether this trader trades or stands by)."""
    head = "trader ready" if status.get("ready") else "trader NOT ready"
    if status.get("role") == "standby":
        head = "trader standing by"
    if not status.get("ready"):
        head += f" ({'; '.join(status.get('reasons') or ['no reason given'])})"
    parts = [head]
    for book in books:
        base_ccy, quote_ccy = book["market"].split(":")[1].split("/")
        price = book["price"]
        if price is None:
            parts.append(f"{book['market']}: {book['quote']:,.2f} {quote_ccy}, no decision yet")
            continue
        equity = book["quote"] + book["base"] * price
        held = book["base"] * price / equity if equity else 0.0
        decided = datetime.fromtimestamp(book["candle_ts"] / 1000, UTC).strftime("%Y-%m-%d %H:%M")
        parts.append(
            f"{book['market']}: equity {equity:,.2f} {quote_ccy}, position {book['base']:.6g} "
            f"{base_ccy} ({held:.0%}), last decision {decided} {book['outcome']} "
            f"-> {book['target']:.0%}, champion {book['model_name']} v{book['model_version']}"
        )
    risk = (status.get("risk") or {}).get("global") or {}
    parts.append(f"risk {risk.get('state', '?')}")
    return " | ".join(parts)
