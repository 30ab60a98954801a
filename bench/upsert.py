"""upsert_ohlcv against the server's ceiling and against pandas' to_sql, side by side.

In one run, on a fresh Postgres database (CRYPTOBOTS_TEST_PG_URL's server):
  (a) plain COPY of the candles, already serialized, into an empty table with
      ohlcv's primary key: the server's ceiling (text and binary; the faster counts)
  (b) upsert_ohlcv of the candles held in memory into the empty ohlcv, end to end
  (c) upsert_ohlcv of the same candles again (all unchanged)
  (d) the same candles through DataFrame.to_sql(method="multi", chunksize=10_000)
Floors (issue 2): (b) >= 60% of (a), (c) >= 75% of (a), (b) >= 15x (d).

    python -m bench.upsert [--rows 1000000]
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import sqlalchemy as sa

from bench.common import Floors, scratch_database
from pipeline.arguments import Parser, positive_int
from pipeline.db.upsert import upsert_ohlcv
from pipeline.db.upsert.postgres import PGCOPY_HEADER, PGCOPY_TRAILER

FLOOR_NEW = 0.60
FLOOR_UNCHANGED = 0.75
FLOOR_TO_SQL = 15.0
COLUMNS = ["exchange", "symbol", "timeframe", "ts", "open", "high", "low", "close", "volume"]


def candles(rows: int, markets: int = 20, seed: int = 7) -> pd.DataFrame:
    """`rows` 1-minute candles over `markets` markets, prices as exchanges print them."""
    rng = np.random.default_rng(seed)
    per_market = rows // markets
    frames = []
    for m in range(markets):
        n = per_market if m < markets - 1 else rows - per_market * (markets - 1)
        close = np.round(100 * (m + 1) * np.exp(np.cumsum(rng.normal(0, 1e-3, n))), 2)
        open_ = np.round(np.r_[close[0], close[:-1]], 2)
        wick = np.round(np.abs(rng.normal(0, 0.05 * (m + 1), (2, n))), 2)
        frames.append(
            pd.DataFrame(
                {
                    "exchange": "binance",
                    "symbol": f"C{m:02d}/USDT",
                    "timeframe": "1m",
                    "ts": 1_600_000_000_000 - 1_600_000_000_000 % 60_000 + np.arange(n) * 60_000,
                    "open": open_,
                    "high": np.maximum(open_, close) + wick[0],
                    "low": np.maximum(np.minimum(open_, close) - wick[1], 0.01),
                    "close": close,
                    "volume": np.round(rng.exponential(3.0, n), 8),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def binary_copy_payload(frame: pd.DataFrame) -> bytes:
    """All nine columns as a binary COPY stream (the strings are fixed-width per market)."""
    parts = [PGCOPY_HEADER]
    for _, group in frame.groupby(["exchange", "symbol", "timeframe"], sort=True):
        fields = [("n", ">i2")]
        for name in ("exchange", "symbol", "timeframe"):
            width = len(group[name].iloc[0].encode())
            fields += [(f"{name}_len", ">i4"), (name, f"S{width}")]
        fields += [("ts_len", ">i4"), ("ts", ">i8")]
        for name in ("open", "high", "low", "close", "volume"):
            fields += [(f"{name}_len", ">i4"), (name, ">f8")]
        rows = np.empty(len(group), dtype=fields)
        rows["n"] = 9
        for name in ("exchange", "symbol", "timeframe"):
            value = group[name].iloc[0].encode()
            rows[f"{name}_len"], rows[name] = len(value), value
        rows["ts_len"], rows["ts"] = 8, group["ts"].to_numpy()
        for name in ("open", "high", "low", "close", "volume"):
            rows[f"{name}_len"], rows[name] = 8, group[name].to_numpy()
        parts.append(rows.tobytes())
    parts.append(PGCOPY_TRAILER)
    return b"".join(parts)


def csv_payload(frame: pd.DataFrame) -> bytes:
    """The nine columns as CSV without a header (what a text COPY reads)."""
    sink = io.BytesIO()
    pacsv.write_csv(
        pa.Table.from_pandas(frame[COLUMNS], preserve_index=False),
        sink,
        pacsv.WriteOptions(include_header=False),
    )
    return sink.getvalue()


def fresh_copy_table(engine: sa.Engine, name: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
        conn.execute(
            sa.text(f"CREATE TABLE {name} (LIKE ohlcv INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        )
        conn.execute(
            sa.text(f"ALTER TABLE {name} ADD PRIMARY KEY (exchange, symbol, timeframe, ts)")
        )


def plain_copy(engine: sa.Engine, table: str, payload: bytes, options: str) -> None:
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cursor:
            cursor.copy_expert(
                f"COPY {table} ({', '.join(COLUMNS)}) FROM STDIN WITH ({options})",
                io.BytesIO(payload),
                1 << 22,
            )
        raw.commit()
    finally:
        raw.close()


def timed(engine: sa.Engine, label: str, action: Callable[[], object]) -> float:
    with engine.connect() as conn:
        conn.execute(sa.text("CHECKPOINT"))
    start = time.perf_counter()
    result = action()
    seconds = time.perf_counter() - start
    shown = f"  {result}" if result is not None else ""
    print(f"  {label:<58} {seconds:7.2f} s{shown}", flush=True)
    return seconds


def measure(rows: int, markets: int = 20) -> dict[str, Any]:
    """Time (a)-(d) on `rows` candles over `markets` markets in a scratch database:
    the seconds of each, rows/s, and the ratios the floors judge."""
    with scratch_database("cb_bench_upsert") as engine:
        frame = candles(rows, markets)
        n = len(frame)
        print(f"bench/upsert.py: {n:,} candles, {frame['symbol'].nunique()} markets")
        csv, binary = csv_payload(frame), binary_copy_payload(frame)

        def copy_into(table: str, payload: bytes, options: str) -> Callable[[], None]:
            fresh_copy_table(engine, table)
            return lambda: plain_copy(engine, table, payload, options)

        label = "(a) plain COPY, pre-serialized, into empty PK table"
        copy_text = timed(engine, f"{label}, text", copy_into("copy_text", csv, "FORMAT csv"))
        copy_binary = timed(
            engine, f"{label}, binary", copy_into("copy_binary", binary, "FORMAT binary")
        )
        first = timed(
            engine, "(b) upsert_ohlcv into empty ohlcv", lambda: upsert_ohlcv(engine, frame)
        )
        again = timed(
            engine, "(c) upsert_ohlcv again (all unchanged)", lambda: upsert_ohlcv(engine, frame)
        )
        copy_binary_2 = timed(
            engine,
            "(a) plain COPY, binary, once more after (b) and (c)",
            copy_into("copy_binary_2", binary, "FORMAT binary"),
        )
        ceiling = min(copy_text, copy_binary, copy_binary_2)
        fresh_copy_table(engine, "ohlcv_to_sql")
        to_sql = timed(
            engine,
            "(d) DataFrame.to_sql(method='multi', chunksize=10_000)",
            lambda: frame.to_sql(
                "ohlcv_to_sql",
                engine,
                if_exists="append",
                index=False,
                method="multi",
                chunksize=10_000,
            ),
        )
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT count(*) FROM ohlcv")).scalar_one()
        assert stored == n, f"ohlcv holds {stored} rows, expected {n}"
    seconds = {"copy": ceiling, "upsert_new": first, "upsert_unchanged": again, "to_sql": to_sql}
    return {
        "rows": n,
        "seconds": seconds,
        "rows_per_s": {k: n / v for k, v in seconds.items()},
        "new_vs_copy": ceiling / first,
        "unchanged_vs_copy": ceiling / again,
        "new_vs_to_sql": to_sql / first,
    }


def report(figures: dict[str, Any]) -> Floors:
    """Print the rates, the ratios and the floors' verdicts."""
    rate, floors = figures["rows_per_s"], Floors()
    new, unchanged, vs = (
        figures["new_vs_copy"],
        figures["unchanged_vs_copy"],
        figures["new_vs_to_sql"],
    )
    print()
    print(f"  (a) COPY ceiling (fastest of 3) {rate['copy']:>10,.0f} rows/s")
    print(
        f"  (b) upsert, new rows            {rate['upsert_new']:>10,.0f} rows/s   (b)/(a) = "
        f"{new:5.2f}  floor {FLOOR_NEW:.2f} -> {floors.check('(b)/(a)', new >= FLOOR_NEW)}"
    )
    print(
        f"  (c) upsert, unchanged           {rate['upsert_unchanged']:>10,.0f} rows/s   "
        f"(c)/(a) = {unchanged:5.2f}  floor {FLOOR_UNCHANGED:.2f} -> "
        f"{floors.check('(c)/(a)', unchanged >= FLOOR_UNCHANGED)}"
    )
    print(
        f"  (d) to_sql                      {rate['to_sql']:>10,.0f} rows/s   (b)/(d) = "
        f"{vs:5.1f}x  floor {FLOOR_TO_SQL:.0f}x -> {floors.check('(b)/(d)', vs >= FLOOR_TO_SQL)}"
    )
    return floors


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="python -m bench.upsert", description=__doc__)
    parser.add_argument("--rows", type=positive_int, default=1_000_000)
    args = parser.parse_args(argv)
    report(measure(args.rows)).exit()


if __name__ == "__main__":
    main()
