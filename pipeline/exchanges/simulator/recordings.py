"""Recorded candles on disk (`<exchange>_<BASE>-<QUOTE>_<timeframe>.csv[.gz]`).

Values are kept as the recorded strings, so that the simulator serves exactly
what was recorded: duplicates, gaps and bad prints included.
"""

from __future__ import annotations

import csv
import gzip
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.settings import timeframe_ms

FILE_NAME = re.compile(
    r"^(?P<exchange>[a-z0-9]+)_(?P<base>[A-Z0-9]+)-(?P<quote>[A-Z0-9]+)_(?P<timeframe>\d+[smhdw])"
    r"\.csv(\.gz)?$"
)
HEADER = ["timestamp", "open", "high", "low", "close", "volume"]


@dataclass(frozen=True)
class Recording:
    """One recorded candle series, sorted by open time (duplicates in recorded order)."""

    exchange: str
    base: str
    quote: str
    timeframe: str
    ts: np.ndarray  # int64 ms, candle open
    text: np.ndarray  # (n, 5) object: open, high, low, close, volume as recorded
    close: np.ndarray  # float64, for books and tickers

    @property
    def symbol(self) -> str:
        return f"{self.base}/{self.quote}"

    @property
    def market_id(self) -> str:
        """Binance's symbol id, e.g. BTCUSDT."""
        return f"{self.base}{self.quote}"

    @property
    def timeframe_ms(self) -> int:
        return timeframe_ms(self.timeframe)

    @property
    def span_ms(self) -> int:
        """First open to last close: the length of one replay cycle."""
        return int(self.ts[-1] - self.ts[0]) + self.timeframe_ms


def read_recording(path: Path) -> Recording:
    """Load one file; raise ValueError naming the file and line when it is malformed."""
    match = FILE_NAME.match(path.name)
    if match is None:
        raise ValueError(f"{path}: name is not <exchange>_<BASE>-<QUOTE>_<timeframe>.csv[.gz]")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header != HEADER:
            raise ValueError(f"{path}: header {header} is not {HEADER}")
        rows = list(reader)
    if not rows:
        raise ValueError(f"{path}: no candles")
    try:
        ts = np.array([int(row[0]) for row in rows], dtype=np.int64)
    except ValueError as error:
        raise ValueError(f"{path}: a timestamp is not integer milliseconds ({error})") from None
    order = np.argsort(ts, kind="stable")
    text = np.array([row[1:6] for row in rows], dtype=object)[order]
    close = np.array([_number(value) for value in text[:, 3]], dtype=np.float64)
    return Recording(
        exchange=match["exchange"],
        base=match["base"],
        quote=match["quote"],
        timeframe=match["timeframe"],
        ts=ts[order],
        text=text,
        close=close,
    )


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def find_recordings(data_dir: Path, exchange: str) -> list[Recording]:
    """Every candle series of `exchange` in `data_dir` (trades files are skipped)."""
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"market data folder {data_dir} does not exist: set --data or CRYPTOBOTS_DATA_DIR"
        )
    found = [
        read_recording(path)
        for path in sorted(data_dir.iterdir())
        if (match := FILE_NAME.match(path.name)) and match["exchange"] == exchange
    ]
    if not found:
        raise FileNotFoundError(f"no candle files for exchange {exchange!r} in {data_dir}")
    return found
