"""Bulk upsert of candles into `ohlcv`: idempotent, all-or-nothing, fast.

On Postgres everything travels as binary COPY laid out by numpy (no per-row
Python). The stored candles in each market's time range are read back (one
binary COPY TO) and compared with the batch in numpy, so that:
- new rows are copied straight into `ohlcv`, at the server's COPY speed;
- changed rows go through a temporary staging table and one
  `INSERT ... ON CONFLICT DO UPDATE` that only touches rows whose values changed;
- unchanged rows are not written at all (re-running an interval writes nothing).
If a concurrent writer stores some of the new keys first, the direct copy fails
on the primary key, is rolled back to a savepoint, and those rows take the
ON CONFLICT path too, so the outcome is the same. On SQLite, `executemany` with
`ON CONFLICT`. Duplicate keys inside one batch resolve deterministically: the
last one wins.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.engine import Connection, Engine

from pipeline.db.schema import MARKET_KEY, OHLCV_VALUES
from pipeline.errors import DataValidationError

COLUMNS = (*MARKET_KEY, "ts", *OHLCV_VALUES)
MAX_LISTED = 20

_PGCOPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
_PGCOPY_TRAILER = (-1).to_bytes(2, "big", signed=True)

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


@dataclass(frozen=True)
class _Batch:
    """A validated batch in columns, deduplicated and sorted by primary key."""

    markets: list[tuple[str, str, str]]  # gid -> (exchange, symbol, timeframe), key order
    gid: np.ndarray  # int32
    ts: np.ndarray  # int64
    values: dict[str, np.ndarray]  # float64, OHLCV_VALUES
    duplicates: int

    def __len__(self) -> int:
        return len(self.ts)


def upsert_ohlcv(bind: Engine | Connection, rows: Any) -> UpsertResult:
    """Insert or update candles in one transaction; return what changed.

    `bind`: an Engine (its own transaction) or a Connection (the caller's).
    `rows`: a pandas DataFrame, a pyarrow Table, or an iterable of mappings, with
    columns exchange, symbol, timeframe, ts (ms since epoch, candle open), open,
    high, low, close, volume. A batch holding a row with a missing key field or a
    non-finite price or volume is refused whole with a DataValidationError that
    lists those rows; nothing of it is written.
    """
    batch = _prepare(_columns(rows))
    if len(batch) == 0:
        return UpsertResult(0, 0, 0, batch.duplicates)
    with transaction(bind) as conn:
        if conn.dialect.name == "postgresql":
            inserted, updated = _merge_postgres(conn, batch)
        elif conn.dialect.name == "sqlite":
            inserted, updated = _merge_sqlite(conn, batch)
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


def _columns(rows: Any) -> dict[str, Any]:
    """Column name -> array-like. Key columns of frames stay pandas Series (fast factorize)."""
    module = type(rows).__module__.split(".")[0]
    if module == "pyarrow":
        rows, module = rows.to_pandas(), "pandas"
    if module == "pandas":
        present = set(rows.columns)
        pick = lambda name: rows[name] if name in MARKET_KEY else rows[name].to_numpy()  # noqa: E731
    else:
        records = rows if isinstance(rows, list) else list(_as_records(rows))
        present = set(COLUMNS) if not records else set().union(*(r.keys() for r in records))
        pick = lambda name: np.array([r.get(name) for r in records], dtype=object)  # noqa: E731
    missing = [name for name in COLUMNS if name not in present]
    if missing:
        raise DataValidationError(
            f"upsert_ohlcv: rows lack column(s) {missing}; expected columns {list(COLUMNS)}"
        )
    return {name: pick(name) for name in COLUMNS}


def _as_records(rows: Iterable[Any]) -> Iterable[Mapping[str, Any]]:
    for row in rows:
        if not isinstance(row, Mapping):
            raise DataValidationError(
                f"upsert_ohlcv: a row is a {type(row).__name__}, expected a mapping of "
                f"{list(COLUMNS)} (or pass a DataFrame / pyarrow Table)"
            )
        yield row


def _to_float(name: str, column: np.ndarray) -> np.ndarray:
    try:
        return np.asarray(column, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise DataValidationError(
            f"upsert_ohlcv: column {name!r} holds a value that is not a number ({error})"
        ) from None


def _to_ts(column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int64 ms, bad mask) from ints, floats, datetimes or objects."""
    if column.dtype.kind == "M":
        bad = np.isnat(column)
        return column.astype("datetime64[ms]").astype(np.int64), bad
    if column.dtype.kind in "iu":
        return column.astype(np.int64), np.zeros(len(column), dtype=bool)
    as_float = _to_float("ts", column)
    bad = ~np.isfinite(as_float) | (as_float != np.round(as_float))
    return np.where(bad, 0, as_float).astype(np.int64), bad


def _factorize_markets(columns: dict[str, Any]) -> tuple[np.ndarray, list, np.ndarray]:
    """Group ids numbered in primary-key order, the market of each id, and a bad-key mask."""
    import pandas as pd

    n = len(columns["ts"])
    bad = np.zeros(n, dtype=bool)
    combined = np.zeros(n, dtype=np.int64)
    uniques = []
    for name in MARKET_KEY:
        codes, values = pd.factorize(columns[name], sort=True)
        valid = np.array([_is_text(v) for v in values] + [False])
        bad |= ~valid[codes]  # code -1 (None/NaN) picks the trailing False
        combined = combined * (len(values) + 1) + (codes + 1)
        uniques.append(values)
    combined[bad] = -1
    gid, keys = pd.factorize(combined, sort=True)
    markets = []
    for key in keys:
        parts = []
        for values in reversed(uniques):
            key, code = divmod(int(key), len(values) + 1)
            parts.append(str(values[code - 1]) if code else "")
        markets.append(tuple(reversed(parts)))
    return gid.astype(np.int32), markets, bad


def _prepare(columns: dict[str, Any]) -> _Batch:
    n = len(columns["ts"])
    ts, bad_ts = _to_ts(columns["ts"])
    values = {name: _to_float(name, columns[name]) for name in OHLCV_VALUES}
    gid, markets, bad_key = _factorize_markets(columns) if n else (np.zeros(0, np.int32), [], None)
    if n:
        bad_value = {name: ~np.isfinite(values[name]) for name in OHLCV_VALUES}
        bad = bad_ts | bad_key | np.logical_or.reduce(list(bad_value.values()))
        if bad.any():
            raise DataValidationError(_describe_bad_rows(columns, bad, bad_ts, bad_key, bad_value))
    if _strictly_increasing(gid, ts):  # already in key order without duplicates
        return _Batch(markets, gid, ts, values, duplicates=0)
    order = np.lexsort((np.arange(n), ts, gid))
    gid, ts = gid[order], ts[order]
    last = np.ones(n, dtype=bool)
    last[:-1] = (gid[1:] != gid[:-1]) | (ts[1:] != ts[:-1])
    keep = order[last]
    return _Batch(
        markets=markets,
        gid=gid[last],
        ts=ts[last],
        values={name: values[name][keep] for name in OHLCV_VALUES},
        duplicates=int(n - last.sum()),
    )


def _describe_bad_rows(
    columns: dict[str, Any],
    bad: np.ndarray,
    bad_ts: np.ndarray,
    bad_key: np.ndarray,
    bad_value: dict[str, np.ndarray],
) -> str:
    columns = {name: np.asarray(column, dtype=object) for name, column in columns.items()}
    indexes = np.flatnonzero(bad)
    listed = []
    for i in indexes[:MAX_LISTED]:
        problems = [f"{name} missing" for name in MARKET_KEY if not _is_text(columns[name][i])]
        if bad_ts[i]:
            problems.append(f"ts {columns['ts'][i]!r} is not an integer timestamp")
        problems += [
            f"{name} {columns[name][i]!r} is not finite"
            for name in OHLCV_VALUES
            if bad_value[name][i]
        ]
        market = ":".join(str(columns[name][i]) for name in MARKET_KEY)
        listed.append(f"row {i} ({market} ts={columns['ts'][i]}): {', '.join(problems)}")
    more = f"; and {len(indexes) - MAX_LISTED} more" if len(indexes) > MAX_LISTED else ""
    return (
        f"upsert_ohlcv refused a batch of {len(bad)} rows, nothing was written: "
        f"{len(indexes)} invalid row(s): {'; '.join(listed)}{more}. "
        "Quarantine or fix these rows before upserting."
    )


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


class _CopyStream(io.RawIOBase):
    """Rows already laid out as binary COPY tuples, read as one COPY stream without joining."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        views = [np.ascontiguousarray(a).view(np.uint8).reshape(-1) for a in arrays if len(a)]
        self._parts = [memoryview(_PGCOPY_HEADER), *map(memoryview, views)]
        self._parts.append(memoryview(_PGCOPY_TRAILER))
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


def _fill_values(rows: np.ndarray, batch: _Batch, where: np.ndarray) -> None:
    rows["ts_len"], rows["ts"] = 8, batch.ts[where]
    for name in OHLCV_VALUES:
        rows[f"{name}_len"], rows[name] = 8, batch.values[name][where]


def _staging_rows(batch: _Batch, where: np.ndarray) -> np.ndarray:
    """COPY tuples (gid, ts, values) for the staging table; gid is 1-based like ORDINALITY."""
    rows = np.empty(len(where), dtype=_KEYED_FIELDS)
    rows["n"] = 2 + len(OHLCV_VALUES)
    rows["gid_len"], rows["gid"] = 4, batch.gid[where] + 1
    _fill_values(rows, batch, where)
    return rows


def _ohlcv_rows(batch: _Batch, gid: int, where: np.ndarray) -> np.ndarray:
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
    body = sink.getbuffer()[len(_PGCOPY_HEADER) : -len(_PGCOPY_TRAILER)]
    rows = np.frombuffer(body, dtype=_KEYED_FIELDS)
    stored = np.empty(len(rows), dtype=STORED_DTYPE)
    for name in stored.dtype.names:
        stored[name] = rows[name]
    stored["gid"] -= 1
    if len(stored) > 1 and not _strictly_increasing(stored["gid"], stored["ts"]):
        stored = stored[np.lexsort((stored["ts"], stored["gid"]))]
    return stored


def _strictly_increasing(gid: np.ndarray, ts: np.ndarray) -> bool:
    step_gid, step_ts = np.diff(gid), np.diff(ts)
    return bool(np.all((step_gid > 0) | ((step_gid == 0) & (step_ts > 0))))


def _classify(batch: _Batch, stored: np.ndarray, spans: list[slice]) -> tuple[np.ndarray, ...]:
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


def _merge_postgres(conn: Connection, batch: _Batch) -> tuple[int, int]:
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


def _copy_new(cursor: Any, batch: _Batch, new: np.ndarray, spans: list[slice]) -> bool:
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


def _merge_sqlite(conn: Connection, batch: _Batch) -> tuple[int, int]:
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
