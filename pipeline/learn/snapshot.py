"""Stored candles of one market frozen in a file for a training and a validation window.

`snapshot_window` reads the candles both windows need (with the features' look-back)
from the database, fills gaps and writes them to a file, so that every algorithm
trains and is evaluated on the same data; `load_snapshot` reads it back. The queries
it rests on (`load_candles`, the first and newest stored candle) serve the other
stages too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.db.schema import ohlcv
from pipeline.errors import DataValidationError
from pipeline.learn.features import Candles, FeatureSpec, fill_gaps
from pipeline.learn.train_request import DEFAULT_SPEC
from pipeline.learn.windows import Window
from pipeline.settings import Market, Settings
from pipeline.timeutil import iso


@dataclass(frozen=True)
class Snapshot:
    """The candles of one market covering a training window (with look-back) and a
    validation window, frozen in a file so that every algorithm sees the same data."""

    market: Market
    train: Window
    valid: Window
    candles: Candles
    filled: np.ndarray


def load_candles(engine: Engine, market: Market, start: int, end: int) -> Candles:
    """Stored candles of `market` with open time in [start, end), ascending."""
    query = (
        sa.select(
            ohlcv.c.ts, ohlcv.c.open, ohlcv.c.high, ohlcv.c.low, ohlcv.c.close, ohlcv.c.volume
        )
        .where(
            ohlcv.c.exchange == market.exchange,
            ohlcv.c.symbol == market.symbol,
            ohlcv.c.timeframe == market.timeframe,
            ohlcv.c.ts >= start,
            ohlcv.c.ts < end,
        )
        .order_by(ohlcv.c.ts)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return Candles.from_rows(rows)


def _stored_ts(engine: Engine, market: Market, bound: Callable[..., Any]) -> int | None:
    """`bound` (sa.func.min or max) of the stored open times of `market`."""
    with engine.connect() as conn:
        found = conn.execute(
            sa.select(bound(ohlcv.c.ts)).where(
                ohlcv.c.exchange == market.exchange,
                ohlcv.c.symbol == market.symbol,
                ohlcv.c.timeframe == market.timeframe,
            )
        ).scalar()
    return None if found is None else int(found)


def latest_candle_end(engine: Engine, market: Market) -> int | None:
    """Close time (ms) of the newest stored candle of `market`, or None when none is."""
    latest = _stored_ts(engine, market, sa.func.max)
    return None if latest is None else latest + market.timeframe_ms


def first_candle(engine: Engine, market: Market) -> int | None:
    """Open time (ms) of the oldest stored candle of `market`, or None when none is."""
    return _stored_ts(engine, market, sa.func.min)


def earliest_training_start(engine: Engine, market: Market, spec: FeatureSpec) -> int | None:
    """The first time a training window of `market` can start: the oldest stored candle
    plus the features' look-back."""
    first = first_candle(engine, market)
    return None if first is None else first + (spec.window - 1) * market.timeframe_ms


def snapshot_window(
    settings: Settings,
    engine: Engine,
    market: Market,
    train: Window,
    valid: Window,
    spec: FeatureSpec = DEFAULT_SPEC,
) -> Path:
    """Write the candles both windows need to a file: from `spec.window - 1` candles
    before the training window (the features' look-back) to the validation end."""
    tf_ms = market.timeframe_ms
    start = train.start - (spec.window - 1) * tf_ms
    candles = load_candles(engine, market, start, valid.end)
    hint = (
        f"backfill it first: python -m pipeline backfill --market {market} "
        f"--start {iso(start)} --end {iso(valid.end)}"
    )
    if len(candles) == 0:
        raise DataValidationError(
            f"no stored candles of {market} in {Window(start, valid.end)}: {hint}"
        )
    if candles.ts[0] > start or candles.ts[-1] < valid.end - 2 * tf_ms:
        raise DataValidationError(
            f"stored candles of {market} cover only [{iso(int(candles.ts[0]))}, "
            f"{iso(int(candles.ts[-1]) + tf_ms)}) of the needed {Window(start, valid.end)}: {hint}"
        )
    filled_candles, filled = fill_gaps(candles, tf_ms)
    coverage = 1.0 - filled.mean()
    if coverage < 0.9:
        raise DataValidationError(
            f"{market} has only {coverage:.0%} of its candles in {Window(start, valid.end)} "
            f"(the rest are gaps): {hint}"
        )
    path = (
        settings.var_dir
        / "snapshots"
        / (f"{slug(str(market))}_{train.start}_{train.end}_{valid.start}_{valid.end}.npz")
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "market": str(market),
        "train": [train.start, train.end],
        "valid": [valid.start, valid.end],
    }
    temporary = path.with_suffix(".tmp.npz")
    np.savez(
        temporary,
        meta=np.array(json.dumps(meta)),
        filled=filled,
        **{
            name: getattr(filled_candles, name)
            for name in ("ts", "open", "high", "low", "close", "volume")
        },
    )
    temporary.replace(path)
    return path


def load_snapshot(path: Path | str) -> Snapshot:
    """Read a snapshot written by `snapshot_window`."""
    path = Path(path)
    if not path.is_file():
        raise DataValidationError(f"snapshot {path} does not exist: run snapshot_window again")
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        candles = Candles(
            *(data[name] for name in ("ts", "open", "high", "low", "close", "volume"))
        )
        filled = data["filled"]
    return Snapshot(
        market=Market.model_validate(meta["market"]),
        train=Window(*meta["train"]),
        valid=Window(*meta["valid"]),
        candles=candles,
        filled=filled,
    )


def slug(text: str) -> str:
    """`text` as a lower-case file-name stem: 'binance:BTC/USDT:1h' -> 'binance-btc-usdt-1h'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
