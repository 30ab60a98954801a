"""upsert_ohlcv's batch preparation: the last row of each key, in key order."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
from hypothesis import given

from pipeline.db.upsert.batch import as_columns, prepare
from tests.support.candles import HOUR, T0, candle

keys = st.tuples(st.sampled_from(["BTC/USDT", "ETH/BTC"]), st.integers(0, 5))


@given(st.lists(st.tuples(keys, st.floats(0.01, 1e6)), max_size=40))
def test_batch_preparation_keeps_the_last_row_of_each_key_in_key_order(rows: list) -> None:
    records = [candle(T0 + t * HOUR, close=c, symbol=s) for (s, t), c in rows]
    batch = prepare(as_columns(records))
    expected = {}
    for (symbol, t), close in rows:
        expected[(symbol, T0 + t * HOUR)] = close
    got = [
        ((batch.markets[g][1], int(ts)), close)
        for g, ts, close in zip(batch.gid, batch.ts, batch.values["close"], strict=True)
    ]
    assert got == sorted(expected.items())
    assert batch.duplicates == len(rows) - len(expected)
    assert np.all(np.diff(batch.gid) >= 0)
