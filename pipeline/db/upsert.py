"""Bulk upsert of candles into `ohlcv`: idempotent, all-or-nothing, fast.

On Postgres the batch is written as binary COPY (built with numpy, no per-row
Python) into a temporary staging table, then merged by one
`INSERT ... ON CONFLICT DO UPDATE` that only touches rows whose values changed.
On SQLite, `executemany` with `ON CONFLICT`. Duplicate keys inside one batch are
resolved deterministically: the last occurrence wins.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipeline.db.schema import MARKET_KEY, OHLCV_VALUES
from pipeline.errors import DataValidationError

COLUMNS = (*MARKET_KEY, "ts", *OHLCV_VALUES)
MAX_LISTED = 20

_PGCOPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
_PGCOPY_TRAILER = (-1).to_bytes(2, "big", signed=True)
_STAGING_DTYPE = np.dtype(
    [("nfields", ">i2"), ("gid_len", ">i4"), ("gid", ">i4"), ("ts_len", ">i4"), ("ts", ">i8")]
    + [field for name in OHLCV_VALUES for field in ((f"{name}_len", ">i4"), (name, ">f8"))]
)

_PG_STAGING = """
CREATE TEMPORARY TABLE ohlcv_staging (
    gid integer NOT NULL, ts bigint NOT NULL,
    open double precision NOT NULL, high double precision NOT NULL,
    low double precision NOT NULL, close double precision NOT NULL,
    volume double precision NOT NULL
) ON COMMIT DROP
"""

_PG_MERGE = """
WITH markets AS (
    SELECT * FROM unnest(%(exchanges)s::text[], %(symbols)s::text[], %(timeframes)s::text[])
        WITH ORDINALITY AS m(exchange, symbol, timeframe, gid)
), merged AS (
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


def upsert_ohlcv(engine: Engine, rows: Any) -> UpsertResult:
    """Insert or update candles in one transaction; return what changed.

    `rows`: a pandas DataFrame, a pyarrow Table, or an iterable of mappings, with
    columns exchange, symbol, timeframe, ts (ms since epoch, candle open), open,
    high, low, close, volume. A batch holding a row with a missing key field or a
    non-finite price or volume is refused whole with a DataValidationError that
    lists those rows; nothing of it is written.
    """
    batch = _prepare(_columns(rows))
    if len(batch) == 0:
        return UpsertResult(0, 0, 0, batch.duplicates)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            inserted, updated = _merge_postgres(conn, batch)
        elif conn.dialect.name == "sqlite":
            inserted, updated = _merge_sqlite(conn, batch)
        else:
            raise NotImplementedError(f"upsert_ohlcv does not support {conn.dialect.name}")
    return UpsertResult(inserted, updated, len(batch) - inserted - updated, batch.duplicates)


def _columns(rows: Any) -> dict[str, np.ndarray]:
    module = type(rows).__module__.split(".")[0]
    if module == "pandas":
        present = set(rows.columns)
        pick = lambda name: rows[name].to_numpy()  # noqa: E731
    elif module == "pyarrow":
        present = set(rows.column_names)
        pick = lambda name: rows.column(name).to_numpy(zero_copy_only=False)  # noqa: E731
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


def _factorize_markets(columns: dict[str, np.ndarray]) -> tuple[np.ndarray, list, np.ndarray]:
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


def _prepare(columns: dict[str, np.ndarray]) -> _Batch:
    n = len(columns["ts"])
    ts, bad_ts = _to_ts(columns["ts"])
    values = {name: _to_float(name, columns[name]) for name in OHLCV_VALUES}
    gid, markets, bad_key = _factorize_markets(columns) if n else (np.zeros(0, np.int32), [], None)
    if n:
        bad_value = {name: ~np.isfinite(values[name]) for name in OHLCV_VALUES}
        bad = bad_ts | bad_key | np.logical_or.reduce(list(bad_value.values()))
        if bad.any():
            raise DataValidationError(_describe_bad_rows(columns, bad, bad_ts, bad_key, bad_value))
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
    columns: dict[str, np.ndarray],
    bad: np.ndarray,
    bad_ts: np.ndarray,
    bad_key: np.ndarray,
    bad_value: dict[str, np.ndarray],
) -> str:
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


def _staging_payload(batch: _Batch) -> bytes:
    """The batch as a PostgreSQL binary COPY stream, built in numpy."""
    rows = np.empty(len(batch), dtype=_STAGING_DTYPE)
    rows["nfields"] = 2 + len(OHLCV_VALUES)
    rows["gid_len"], rows["gid"] = 4, batch.gid + 1
    rows["ts_len"], rows["ts"] = 8, batch.ts
    for name in OHLCV_VALUES:
        rows[f"{name}_len"], rows[name] = 8, batch.values[name]
    return _PGCOPY_HEADER + rows.tobytes() + _PGCOPY_TRAILER


def _merge_postgres(conn: Connection, batch: _Batch) -> tuple[int, int]:
    payload = _staging_payload(batch)
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.execute(_PG_STAGING)
        cursor.copy_expert(
            "COPY ohlcv_staging FROM STDIN WITH (FORMAT binary)", io.BytesIO(payload), 1 << 22
        )
        exchanges, symbols, timeframes = (list(col) for col in zip(*batch.markets, strict=True))
        cursor.execute(
            _PG_MERGE, {"exchanges": exchanges, "symbols": symbols, "timeframes": timeframes}
        )
        inserted, updated = cursor.fetchone()
        cursor.execute("DROP TABLE ohlcv_staging")
    finally:
        cursor.close()
    return int(inserted), int(updated)


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


def count_ohlcv(engine: Engine) -> int:
    """Number of stored candles (all markets)."""
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM ohlcv")).scalar_one())
