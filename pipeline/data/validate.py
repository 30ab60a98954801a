"""Validate fetched candles with a Great Expectations suite; split good from bad.

One GX run per ingest batch (a run costs about 0.1 s whatever its size, so the
whole interval is validated at once, never page by page), in an ephemeral GX
context built once per process. Every failing row is quarantined with the
reasons of all the expectations it failed; extreme but possible candles (a range
over `flash_move`) are flagged and stored, not dropped.

Repeated candles are resolved before the suite runs, by one rule:
- identical copies of a candle (same open time and values) are one candle;
- different versions of the same open time: the version with the most recorded
  decimal digits wins (a stitched source's full-precision copy beats its rounded
  copy), ties broken by the larger volume, then the larger close; the other
  versions are quarantined as superseded. The rule looks only at the values, so
  it picks the same version however the exchange's pages were cut.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from pipeline.settings import Market, ValidationSettings

PRICES = ("open", "high", "low", "close")
VALUES = (*PRICES, "volume")
REPORT_LIST_LIMIT = 100
SUITE_VERSION = "ohlcv-1"


@dataclass(frozen=True)
class Validated:
    """A validated batch: rows to store, rows to quarantine (with reasons), flags, report."""

    good: pd.DataFrame  # exchange, symbol, timeframe, ts, open, high, low, close, volume
    quarantined: pd.DataFrame  # ts, values, raw, reason
    received: int  # distinct rows received (after identical repeats were merged)
    repeats: int  # identical copies merged
    failed: int = 0  # rows that failed the suite (superseded versions are not failures)
    flagged: list[int] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)

    def first_reasons(self, n: int = 3) -> list[str]:
        if self.quarantined.empty:
            return []
        return list(self.quarantined["reason"].value_counts().index[:n])


def validate_candles(
    rows: list[list], market: Market, start: int, end: int, policy: ValidationSettings
) -> Validated:
    """Validate candles [ts, open, high, low, close, volume] of `market` for [start, end)."""
    frame = _frame(rows)
    frame, repeats = _merge_identical(frame)
    frame, superseded = _resolve_versions(frame)
    received = len(frame) + len(superseded)
    if frame.empty:
        return Validated(_empty_good(market), superseded, received, repeats)

    reasons, flags, report = _run_suite(frame, market, start, end, policy)
    bad = np.array([bool(r) for r in reasons])
    quarantined = frame[bad].assign(reason=[r for r in reasons if r])
    good = frame[~bad]
    good = pd.DataFrame(
        {
            "exchange": market.exchange,
            "symbol": market.symbol,
            "timeframe": market.timeframe,
            "ts": good["ts"].astype(np.int64),
            **{name: good[name].astype(np.float64) for name in VALUES},
        }
    )
    flagged = sorted(int(frame["ts"].iloc[i]) for i in flags if not bad[i])
    all_bad = pd.concat([superseded, quarantined[superseded.columns]], ignore_index=True)
    return Validated(good, all_bad, received, repeats, int(bad.sum()), flagged, report)


def _frame(rows: list[list]) -> pd.DataFrame:
    """Rows as floats (ts too: it may be missing), non-numeric and non-finite as NaN, raw kept."""
    raw = [list(row[:6]) + [None] * (6 - len(row)) for row in rows]
    cells = np.array(raw, dtype=object).reshape(-1, 6)
    frame = pd.DataFrame(
        {
            name: pd.to_numeric(pd.Series(cells[:, i]), errors="coerce").astype(np.float64)
            for i, name in enumerate(["ts", *VALUES])
        }
    )
    frame = frame.where(np.isfinite(frame))
    frame["raw"] = raw
    return frame


def _merge_identical(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    first = ~frame.duplicated(subset=["ts", *VALUES])
    return frame[first].reset_index(drop=True), int((~first).sum())


def _decimals(value: float) -> int:
    if not math.isfinite(value):
        return -1
    text = repr(float(value))
    return 0 if "e" in text else len(text.split(".")[1].rstrip("0"))


def _resolve_versions(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep one version per open time (see the module docstring); return (kept, superseded)."""
    columns = ["ts", *VALUES, "raw", "reason"]
    ts = frame["ts"]
    clash = ts.notna() & ts.duplicated(keep=False)
    if not clash.any():
        return frame, pd.DataFrame(columns=columns)
    ranked = frame[clash].assign(
        _precision=frame[clash][list(VALUES)].map(_decimals).sum(axis=1),
    )
    ranked = ranked.sort_values(
        ["ts", "_precision", "volume", "close"], ascending=[True, False, False, False]
    )
    winners = ranked.groupby("ts", sort=False).head(1).index
    losers = ranked.index.difference(winners)
    superseded = frame.loc[losers].assign(
        reason="duplicate open time with different values: superseded by the version with "
        "more recorded precision"
    )
    return frame.drop(index=losers).reset_index(drop=True), superseded[columns]


def _empty_good(market: Market) -> pd.DataFrame:
    return pd.DataFrame(columns=["exchange", "symbol", "timeframe", "ts", *VALUES])


@lru_cache(maxsize=1)
def _gx() -> tuple[Any, Any]:
    """The ephemeral GX context and batch definition, built once per process."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas("candles").add_dataframe_asset("ohlcv")
    return context, asset.add_batch_definition_whole_dataframe("batch")


def _suite(market: Market, start: int, end: int, policy: ValidationSettings) -> Any:
    import great_expectations as gx
    import great_expectations.expectations as gxe

    def meta(reason: str, severity: str = "quarantine") -> dict[str, str]:
        return {"reason": reason, "severity": severity}

    expectations = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=["ts", *VALUES, "row", "ts_offset", "range"],
            exact_match=True,
            meta=meta("columns are not ts, open, high, low, close, volume"),
        ),
        gxe.ExpectColumnValuesToNotBeNull(column="ts", meta=meta("ts missing or not a number")),
        *(
            gxe.ExpectColumnValuesToNotBeNull(
                column=name, meta=meta(f"{name} missing, not a number or not finite")
            )
            for name in VALUES
        ),
        *(
            gxe.ExpectColumnTypeToBe(type_="float64", column=name, meta=meta(f"{name} not numeric"))
            for name in ("ts", *VALUES)
        ),
        *(
            gxe.ExpectColumnValuesToBeBetween(
                column=name, min_value=0, strict_min=True, meta=meta(f"{name} <= 0")
            )
            for name in PRICES
        ),
        gxe.ExpectColumnValuesToBeBetween(column="volume", min_value=0, meta=meta("volume < 0")),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="open", column_B="low", or_equal=True, meta=meta("low > open")
        ),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="close", column_B="low", or_equal=True, meta=meta("low > close")
        ),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="high", column_B="open", or_equal=True, meta=meta("high < open")
        ),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="high", column_B="close", or_equal=True, meta=meta("high < close")
        ),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="high", column_B="low", or_equal=True, meta=meta("high < low")
        ),
        gxe.ExpectColumnValuesToBeUnique(column="ts", meta=meta("ts not unique")),
        gxe.ExpectColumnValuesToBeBetween(
            column="ts",
            min_value=start,
            max_value=end - 1,
            meta=meta(f"ts outside the interval [{start}, {end})"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="ts_offset",
            min_value=0,
            max_value=0,
            meta=meta(f"ts not aligned to the {market.timeframe} timeframe"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="range",
            max_value=policy.flash_move,
            meta=meta(f"range (high/low - 1) over {policy.flash_move:.0%}", severity="flag"),
        ),
    ]
    return gx.ExpectationSuite(
        name=f"{SUITE_VERSION}:{market}", expectations=expectations, meta={"market": str(market)}
    )


def _run_suite(
    frame: pd.DataFrame, market: Market, start: int, end: int, policy: ValidationSettings
) -> tuple[list[str], set[int], dict[str, Any]]:
    """Per row: '; '-joined quarantine reasons ('' if none); rows flagged; the GX result."""
    _, batch_definition = _gx()
    tf = market.timeframe_ms
    data = frame[["ts", *VALUES]].assign(
        row=np.arange(len(frame)),
        ts_offset=np.where(frame["ts"].notna(), np.mod(frame["ts"].fillna(0), tf), 0),
        range=frame["high"] / frame["low"].where(frame["low"] > 0) - 1,
    )
    batch = batch_definition.get_batch(batch_parameters={"dataframe": data})
    result = batch.validate(
        _suite(market, start, end, policy),
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["row"]},
    )
    reasons: list[list[str]] = [[] for _ in range(len(frame))]
    flags: set[int] = set()
    for outcome in result.results:
        if outcome.success:
            continue
        meta = outcome.expectation_config.meta or {}
        indexes = [int(item["row"]) for item in outcome.result.get("unexpected_index_list") or []]
        if meta.get("severity") == "flag":
            flags.update(indexes)
            continue
        if (
            not indexes
            and outcome.exception_info
            and outcome.exception_info.get("raised_exception")
        ):
            indexes = list(range(len(frame)))
        for i in indexes:
            reasons[i].append(meta.get("reason", outcome.expectation_config.type))
    return ["; ".join(r) for r in reasons], flags, _compact(result.to_json_dict())


def _compact(report: Any) -> Any:
    """The GX result with every list cut to REPORT_LIST_LIMIT items (it is kept on disk)."""
    if isinstance(report, dict):
        return {key: _compact(value) for key, value in report.items()}
    if isinstance(report, list):
        return [_compact(value) for value in report[:REPORT_LIST_LIMIT]]
    return report
