"""Loading a study's candles from the database: a market's stored candles and quarantined
times over a window, the last days the legs of a group have in common, and the closes at
given times that observe a quote conversion. SQLAlchemy is imported by the functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pipeline.arbitrage.study_config import Group
from pipeline.arbitrage.study_stats import Series, last_days
from pipeline.settings import Market

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


def load_series(engine: Engine, market: Market, start: int, end: int) -> Series:
    """`market`'s stored candles with open time in [start, end), and its quarantined times."""
    import sqlalchemy as sa

    from pipeline.db.schema import ohlcv, ohlcv_quarantine

    def key(table: sa.Table) -> sa.ColumnElement[bool]:
        return sa.and_(
            table.c.exchange == market.exchange,
            table.c.symbol == market.symbol,
            table.c.timeframe == market.timeframe,
            table.c.ts >= start,
            table.c.ts < end,
        )

    with engine.connect() as conn:
        candles = sa.select(ohlcv.c.ts, ohlcv.c.close, ohlcv.c.volume).where(key(ohlcv))
        rows = conn.execute(candles.order_by(ohlcv.c.ts)).all()
        bad = (
            conn.execute(sa.select(ohlcv_quarantine.c.ts).distinct().where(key(ohlcv_quarantine)))
            .scalars()
            .all()
        )
    data = np.array(rows, dtype=np.float64).reshape(-1, 3)
    return Series(
        data[:, 0].astype(np.int64), data[:, 1], data[:, 2], np.array(sorted(bad), dtype=np.int64)
    )


def stored_window(engine: Engine, group: Group, days: int) -> tuple[int, int] | None:
    """The last `days` of the legs' common stored range, None when a leg has nothing."""
    import sqlalchemy as sa

    from pipeline.db.schema import ohlcv

    firsts, ends = [], []
    with engine.connect() as conn:
        for m in group.markets:
            first, last = conn.execute(
                sa.select(sa.func.min(ohlcv.c.ts), sa.func.max(ohlcv.c.ts)).where(
                    ohlcv.c.exchange == m.exchange,
                    ohlcv.c.symbol == m.symbol,
                    ohlcv.c.timeframe == m.timeframe,
                )
            ).one()
            if first is None:
                return None
            firsts.append(int(first))
            ends.append(int(last) + m.timeframe_ms)
    return last_days(max(firsts), min(ends), days, group.markets[0].timeframe_ms)


def observed_closes(
    engine: Engine, group: Group, ts: np.ndarray, start: int, end: int
) -> dict[tuple[str, str], np.ndarray]:
    """Per (venue, quote) of a group whose asset is quoted in several currencies, the asset's
    stored close at each time in `ts` on that venue in that quote (NaN where it has none, or
    a quarantined one); empty for a group of one quote."""
    base = group.markets[0].symbol.split("/")[0]
    quotes = sorted({m.symbol.split("/")[1] for m in group.markets})
    if len(quotes) < 2:
        return {}
    prices: dict[tuple[str, str], np.ndarray] = {}
    venues = list(dict.fromkeys(m.exchange for m in group.markets))
    for venue in venues:
        for q in quotes:
            market = Market(exchange=venue, symbol=f"{base}/{q}", timeframe=group.timeframe)
            s = load_series(engine, market, start, end)
            usable = ~np.isin(s.ts, s.quarantined)
            price = np.full(ts.size, np.nan)
            at = np.searchsorted(s.ts, ts)
            hit = at < s.ts.size
            hit[hit] &= s.ts[at[hit]] == ts[hit]
            hit[hit] &= usable[at[hit]]
            price[hit] = s.close[at[hit]]
            prices[(venue, q)] = price
    return prices
