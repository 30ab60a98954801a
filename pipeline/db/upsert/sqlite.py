"""The SQLite merge of a batch into `ohlcv`: `executemany` with `ON CONFLICT`."""

from __future__ import annotations

from sqlalchemy.engine import Connection

from pipeline.db.schema import OHLCV_VALUES
from pipeline.db.upsert.batch import Batch

_SQLITE_INSERT = (
    "INSERT INTO ohlcv (exchange, symbol, timeframe, ts, open, high, low, close, volume, "
    "ingested_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, CURRENT_TIMESTAMP) "
    "ON CONFLICT (exchange, symbol, timeframe, ts) DO NOTHING"
)
_SQLITE_UPDATE = (
    "UPDATE ohlcv SET open = ?, high = ?, low = ?, close = ?, volume = ?, "
    "ingested_at = CURRENT_TIMESTAMP "
    "WHERE exchange = ? AND symbol = ? AND timeframe = ? AND ts = ? "
    "AND (open IS NOT ? OR high IS NOT ? OR low IS NOT ? OR close IS NOT ? OR volume IS NOT ?)"
)


def merge(conn: Connection, batch: Batch) -> tuple[int, int]:
    """Insert new rows, update changed ones; return (inserted, updated)."""
    exchange, symbol, timeframe = zip(*(batch.markets[g] for g in batch.gid), strict=True)
    ts = batch.ts.tolist()
    values = [batch.values[name].tolist() for name in OHLCV_VALUES]
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.executemany(
            _SQLITE_INSERT, zip(exchange, symbol, timeframe, ts, *values, strict=True)
        )
        inserted = cursor.rowcount
        cursor.executemany(
            _SQLITE_UPDATE,
            zip(*values, exchange, symbol, timeframe, ts, *values, strict=True),
        )
        updated = cursor.rowcount
    finally:
        cursor.close()
    return inserted, updated
