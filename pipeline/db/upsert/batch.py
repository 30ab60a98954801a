"""A batch of candles in numpy columns: validated, deduplicated, in primary-key order.

A batch holding a row with a missing key field, a non-integer timestamp or a
non-finite price or volume is refused whole, with the offending rows listed.
Duplicate keys resolve deterministically: the last one wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.db.schema import MARKET_KEY, OHLCV_VALUES
from pipeline.errors import DataValidationError

COLUMNS = (*MARKET_KEY, "ts", *OHLCV_VALUES)
MAX_LISTED = 20


@dataclass(frozen=True)
class Batch:
    """A validated batch in columns, deduplicated and sorted by primary key."""

    markets: list[tuple[str, str, str]]  # gid -> (exchange, symbol, timeframe), key order
    gid: np.ndarray  # int32
    ts: np.ndarray  # int64
    values: dict[str, np.ndarray]  # float64, OHLCV_VALUES
    duplicates: int

    def __len__(self) -> int:
        return len(self.ts)


def as_columns(rows: Any) -> dict[str, Any]:
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


def prepare(columns: dict[str, Any]) -> Batch:
    """The batch of `as_columns` output; DataValidationError lists its invalid rows."""
    n = len(columns["ts"])
    ts, bad_ts = _to_ts(columns["ts"])
    values = {name: _to_float(name, columns[name]) for name in OHLCV_VALUES}
    gid, markets, bad_key = _factorize_markets(columns) if n else (np.zeros(0, np.int32), [], None)
    if n:
        bad_value = {name: ~np.isfinite(values[name]) for name in OHLCV_VALUES}
        bad = bad_ts | bad_key | np.logical_or.reduce(list(bad_value.values()))
        if bad.any():
            raise DataValidationError(_describe_bad_rows(columns, bad, bad_ts, bad_key, bad_value))
    if strictly_increasing(gid, ts):  # already in key order without duplicates
        return Batch(markets, gid, ts, values, duplicates=0)
    order = np.lexsort((np.arange(n), ts, gid))
    gid, ts = gid[order], ts[order]
    last = np.ones(n, dtype=bool)
    last[:-1] = (gid[1:] != gid[:-1]) | (ts[1:] != ts[:-1])
    keep = order[last]
    return Batch(
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


def strictly_increasing(gid: np.ndarray, ts: np.ndarray) -> bool:
    """Whether (gid, ts) pairs are in strictly increasing key order."""
    step_gid, step_ts = np.diff(gid), np.diff(ts)
    return bool(np.all((step_gid > 0) | ((step_gid == 0) & (step_ts > 0))))
