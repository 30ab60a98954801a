"""Bulk upsert of candles into `ohlcv`: idempotent, all-or-nothing, fast.

This module is the package's face: `upsert_ohlcv`, its `UpsertResult` and `transaction`.
Beside it, one job each: `batch` validates and prepares a batch in numpy (refused whole
when a row is invalid; the last of duplicate keys wins), `postgres` merges it through
binary COPY (new rows copied, changed rows merged, unchanged rows not written),
`sqlite` through `executemany` with `ON CONFLICT`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection, Engine

from pipeline.db.upsert import postgres, sqlite
from pipeline.db.upsert.batch import COLUMNS, as_columns, prepare

__all__ = ["COLUMNS", "UpsertResult", "transaction", "upsert_ohlcv"]


@dataclass(frozen=True)
class UpsertResult:
    """What one upsert did: new rows, changed rows, rows already stored as given."""

    inserted: int
    updated: int
    unchanged: int
    duplicates: int = 0  # rows dropped inside the batch because a later row had the same key

    @property
    def written(self) -> int:
        return self.inserted + self.updated


def upsert_ohlcv(bind: Engine | Connection, rows: Any) -> UpsertResult:
    """Insert or update candles in one transaction; return what changed.

    `bind`: an Engine (its own transaction) or a Connection (the caller's).
    `rows`: a pandas DataFrame, a pyarrow Table, or an iterable of mappings, with
    columns exchange, symbol, timeframe, ts (ms since epoch, candle open), open,
    high, low, close, volume. A batch holding a row with a missing key field or a
    non-finite price or volume is refused whole with a DataValidationError that
    lists those rows; nothing of it is written.
    """
    batch = prepare(as_columns(rows))
    if len(batch) == 0:
        return UpsertResult(0, 0, 0, batch.duplicates)
    with transaction(bind) as conn:
        if conn.dialect.name == "postgresql":
            inserted, updated = postgres.merge(conn, batch)
        elif conn.dialect.name == "sqlite":
            inserted, updated = sqlite.merge(conn, batch)
        else:
            raise NotImplementedError(f"upsert_ohlcv does not support {conn.dialect.name}")
    return UpsertResult(inserted, updated, len(batch) - inserted - updated, batch.duplicates)


@contextmanager
def transaction(bind: Engine | Connection) -> Iterator[Connection]:
    """A connection in a transaction: a new one from an Engine, or the caller's as is."""
    if isinstance(bind, Connection):
        yield bind
    else:
        with bind.begin() as conn:
            yield conn
