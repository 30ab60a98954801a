"""The Postgres merge of a batch into `ohlcv`: binary COPY laid out by numpy, no per-row Python.

The stored candles in each market's time range are read back (one binary COPY TO)
and compared with the batch in numpy, so that:
- new rows are copied straight into `ohlcv`, at the server's COPY speed;
- changed rows go through a temporary staging table and one
  `INSERT ... ON CONFLICT DO UPDATE` that only touches rows whose values changed;
- unchanged rows are not written at all (re-running an interval writes nothing).
If a concurrent writer stores some of the new keys first, the direct copy fails
on the primary key, is rolled back to a savepoint, and those rows take the
ON CONFLICT path too, so the outcome is the same.
"""

from __future__ import annotations

import io
import itertools
from typing import Any

import numpy as np
from sqlalchemy.engine import Connection

from pipeline.db.schema import MARKET_KEY, OHLCV_VALUES
from pipeline.db.upsert.batch import Batch, strictly_increasing

PGCOPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
PGCOPY_TRAILER = (-1).to_bytes(2, "big", signed=True)

_PG_STAGING = """
CREATE TEMPORARY TABLE ohlcv_staging (
    gid integer NOT NULL, ts bigint NOT NULL,
    open double precision NOT NULL, high double precision NOT NULL,
    low double precision NOT NULL, close double precision NOT NULL,
    volume double precision NOT NULL
) ON COMMIT DROP
"""

_PG_MARKETS = """
SELECT * FROM unnest(%(exchanges)s::text[], %(symbols)s::text[], %(timeframes)s::text[],
                     %(first_ts)s::bigint[], %(last_ts)s::bigint[])
    WITH ORDINALITY AS m(exchange, symbol, timeframe, first_ts, last_ts, gid)
"""

# The stored candles inside each market's time range, as a fixed-width binary stream.
_PG_READ_BACK = f"""
COPY (
    WITH markets AS ({_PG_MARKETS})
    SELECT m.gid::integer, o.ts, o.open, o.high, o.low, o.close, o.volume
    FROM markets AS m JOIN LATERAL (
        SELECT * FROM ohlcv AS o
        WHERE o.exchange = m.exchange AND o.symbol = m.symbol AND o.timeframe = m.timeframe
          AND o.ts BETWEEN m.first_ts AND m.last_ts
    ) AS o ON true
) TO STDOUT WITH (FORMAT binary)
"""

_PG_MERGE = f"""
WITH markets AS ({_PG_MARKETS}), merged AS (
    INSERT INTO ohlcv AS t (exchange, symbol, timeframe, ts, open, high, low, close, volume,
                            ingested_at)
    SELECT m.exchange, m.symbol, m.timeframe, s.ts, s.open, s.high, s.low, s.close, s.volume,
           now()
    FROM ohlcv_staging AS s JOIN markets AS m ON m.gid = s.gid
    ON CONFLICT (exchange, symbol, timeframe, ts) DO UPDATE SET
        open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low,
        close = EXCLUDED.close, volume = EXCLUDED.volume, ingested_at = EXCLUDED.ingested_at
    WHERE (t.open, t.high, t.low, t.close, t.volume)
        IS DISTINCT FROM (EXCLUDED.open, EXCLUDED.high, EXCLUDED.low, EXCLUDED.close,
                          EXCLUDED.volume)
    RETURNING (t.xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM merged
"""

_PG_COPY_OHLCV = (
    "COPY ohlcv (exchange, symbol, timeframe, ts, open, high, low, close, volume) "
    "FROM STDIN WITH (FORMAT binary)"
)
_PG_COPY_STAGING = "COPY ohlcv_staging FROM STDIN WITH (FORMAT binary)"
COPY_CHUNK = 1 << 22


class _CopyStream(io.RawIOBase):
    """Rows already laid out as binary COPY tuples, read as one COPY stream without joining."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        views = [np.ascontiguousarray(a).view(np.uint8).reshape(-1) for a in arrays if len(a)]
        self._parts = [memoryview(PGCOPY_HEADER), *map(memoryview, views)]
        self._parts.append(memoryview(PGCOPY_TRAILER))
        self._part, self._offset = 0, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        written = 0
        while written < len(target) and self._part < len(self._parts):
            part = self._parts[self._part]
            take = min(len(target) - written, len(part) - self._offset)
            target[written : written + take] = part[self._offset : self._offset + take]
            written += take
            self._offset += take
            if self._offset == len(part):
                self._part, self._offset = self._part + 1, 0
        return written


def _value_fields() -> list[tuple[str, str]]:
    fields = [("ts_len", ">i4"), ("ts", ">i8")]
    for name in OHLCV_VALUES:
        fields += [(f"{name}_len", ">i4"), (name, ">f8")]
    return fields


STORED_DTYPE = np.dtype([("gid", "i4"), ("ts", "i8")] + [(name, "f8") for name in OHLCV_VALUES])
_KEYED_FIELDS = [("n", ">i2"), ("gid_len", ">i4"), ("gid", ">i4"), *_value_fields()]


def _fill_values(rows: np.ndarray, batch: Batch, where: np.ndarray) -> None:
    rows["ts_len"], rows["ts"] = 8, batch.ts[where]
    for name in OHLCV_VALUES:
        rows[f"{name}_len"], rows[name] = 8, batch.values[name][where]


def _staging_rows(batch: Batch, where: np.ndarray) -> np.ndarray:
    """COPY tuples (gid, ts, values) for the staging table; gid is 1-based like ORDINALITY."""
    rows = np.empty(len(where), dtype=_KEYED_FIELDS)
    rows["n"] = 2 + len(OHLCV_VALUES)
    rows["gid_len"], rows["gid"] = 4, batch.gid[where] + 1
    _fill_values(rows, batch, where)
    return rows


def _ohlcv_rows(batch: Batch, gid: int, where: np.ndarray) -> np.ndarray:
    """COPY tuples of full ohlcv rows of one market: its key strings have fixed widths."""
    key = [value.encode() for value in batch.markets[gid]]
    fields: list[tuple[str, str]] = [("n", ">i2")]
    for name, value in zip(MARKET_KEY, key, strict=True):
        fields += [(f"{name}_len", ">i4"), (name, f"S{max(len(value), 1)}")]
    rows = np.empty(len(where), dtype=fields + _value_fields())
    rows["n"] = len(MARKET_KEY) + 1 + len(OHLCV_VALUES)
    for name, value in zip(MARKET_KEY, key, strict=True):
        rows[f"{name}_len"], rows[name] = len(value), value
    _fill_values(rows, batch, where)
    return rows


def _read_back(cursor: Any, markets: dict[str, list]) -> np.ndarray:
    """Stored (gid, ts, values) in the batch's ranges, sorted by (gid, ts); gid 0-based."""
    sink = io.BytesIO()
    cursor.copy_expert(cursor.mogrify(_PG_READ_BACK, markets).decode(), sink, COPY_CHUNK)
    body = sink.getbuffer()[len(PGCOPY_HEADER) : -len(PGCOPY_TRAILER)]
    rows = np.frombuffer(body, dtype=_KEYED_FIELDS)
    stored = np.empty(len(rows), dtype=STORED_DTYPE)
    for name in stored.dtype.names:
        stored[name] = rows[name]
    stored["gid"] -= 1
    if len(stored) > 1 and not strictly_increasing(stored["gid"], stored["ts"]):
        stored = stored[np.lexsort((stored["ts"], stored["gid"]))]
    return stored


def _classify(batch: Batch, stored: np.ndarray, spans: list[slice]) -> tuple[np.ndarray, ...]:
    """Boolean masks over the batch: (new, changed); the rest is unchanged."""
    new = np.ones(len(batch), dtype=bool)
    changed = np.zeros(len(batch), dtype=bool)
    stored_bounds = np.searchsorted(stored["gid"], np.arange(len(spans) + 1))
    for gid, span in enumerate(spans):
        have = stored[stored_bounds[gid] : stored_bounds[gid + 1]]
        if len(have) == 0:
            continue
        ts = batch.ts[span]
        at = np.minimum(np.searchsorted(have["ts"], ts), len(have) - 1)
        found = have["ts"][at] == ts
        same = found.copy()
        for name in OHLCV_VALUES:
            same &= have[name][at] == batch.values[name][span]
        new[span] = ~found
        changed[span] = found & ~same
    return new, changed


def merge(conn: Connection, batch: Batch) -> tuple[int, int]:
    """Copy new rows into ohlcv, merge changed ones, skip the rest; return (inserted, updated)."""
    bounds = np.searchsorted(batch.gid, np.arange(len(batch.markets) + 1))
    spans = [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
    exchanges, symbols, timeframes = (list(c) for c in zip(*batch.markets, strict=True))
    markets = {
        "exchanges": exchanges,
        "symbols": symbols,
        "timeframes": timeframes,
        "first_ts": [int(batch.ts[span.start]) for span in spans],
        "last_ts": [int(batch.ts[span.stop - 1]) for span in spans],
    }
    cursor = conn.connection.driver_connection.cursor()
    try:
        new, changed = _classify(batch, _read_back(cursor, markets), spans)
        inserted = 0
        if new.any():
            if _copy_new(cursor, batch, new, spans):
                inserted = int(new.sum())
            else:
                changed |= new
        if not changed.any():
            return inserted, 0
        cursor.execute(_PG_STAGING)
        stream = _CopyStream([_staging_rows(batch, np.flatnonzero(changed))])
        cursor.copy_expert(_PG_COPY_STAGING, stream, COPY_CHUNK)
        cursor.execute(_PG_MERGE, markets)
        merged_inserted, updated = cursor.fetchone()
        cursor.execute("DROP TABLE ohlcv_staging")
        return inserted + int(merged_inserted), int(updated)
    finally:
        cursor.close()


def _copy_new(cursor: Any, batch: Batch, new: np.ndarray, spans: list[slice]) -> bool:
    """COPY the new rows into ohlcv; False (and nothing written) if a concurrent writer
    stored one of these keys first."""
    import psycopg2.errors

    parts = []
    for gid, span in enumerate(spans):
        where = span.start + np.flatnonzero(new[span])
        if len(where):
            parts.append(_ohlcv_rows(batch, gid, where))
    cursor.execute("SAVEPOINT ohlcv_copy")
    try:
        cursor.copy_expert(_PG_COPY_OHLCV, _CopyStream(parts), COPY_CHUNK)
    except psycopg2.errors.UniqueViolation:
        cursor.execute("ROLLBACK TO SAVEPOINT ohlcv_copy")
        return False
    cursor.execute("RELEASE SAVEPOINT ohlcv_copy")
    return True
