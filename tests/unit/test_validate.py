"""Validation: every kind of bad row is quarantined with its reason; good rows pass."""

from __future__ import annotations

import math

import pytest

from pipeline.data.validate import validate_candles
from pipeline.settings import Market, ValidationSettings

MARKET = Market.model_validate("binance:BTC/USDT:1h")
H = 3_600_000
T0 = 1_600_000_000_000 - 1_600_000_000_000 % H
END = T0 + 10 * H
POLICY = ValidationSettings()


def good(i: int, close: float = 100.0) -> list:
    return [T0 + i * H, close - 1, close + 2, close - 2, close, 5.0]


def quarantined_reasons(rows: list[list]) -> dict[int | None, str]:
    result = validate_candles(rows, MARKET, T0, END, POLICY)
    return {
        (None if math.isnan(row["ts"]) else int(row["ts"])): row["reason"]
        for row in result.quarantined.to_dict("records")
    }


def test_good_candles_all_pass() -> None:
    result = validate_candles([good(i) for i in range(10)], MARKET, T0, END, POLICY)
    assert len(result.good) == 10
    assert result.quarantined.empty
    assert result.report["success"] is True


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ([T0 + 3 * H, None, 102.0, 98.0, 100.0, 5.0], "open missing"),
        ([T0 + 3 * H, 99.0, 102.0, 98.0, "abc", 5.0], "close missing, not a number"),
        ([T0 + 3 * H, 0.0, 102.0, 0.0, 100.0, 5.0], "open <= 0"),
        ([T0 + 3 * H, 99.0, 102.0, -1.0, 100.0, 5.0], "low <= 0"),
        ([T0 + 3 * H, 99.0, 97.0, 98.0, 100.0, 5.0], "high < low"),
        ([T0 + 3 * H, 99.0, 99.5, 98.0, 100.0, 5.0], "high < close"),
        ([T0 + 3 * H, 99.0, 102.0, 99.5, 100.0, 5.0], "low > open"),
        ([T0 + 3 * H, 99.0, 102.0, 98.0, 100.0, -5.0], "volume < 0"),
        ([T0 + 3 * H + 60_000, 99.0, 102.0, 98.0, 100.0, 5.0], "not aligned to the 1h"),
        ([END + H, 99.0, 102.0, 98.0, 100.0, 5.0], "outside the interval"),
        ([T0 - H, 99.0, 102.0, 98.0, 100.0, 5.0], "outside the interval"),
        (
            [T0 + 3 * H, 99.0, math.inf, 98.0, 100.0, 5.0],
            "high missing, not a number or not finite",
        ),
    ],
)
def test_each_kind_of_bad_row_is_quarantined_with_its_reason(bad: list, reason: str) -> None:
    rows = [good(0), good(1), bad, good(5)]
    result = validate_candles(rows, MARKET, T0, END, POLICY)
    assert len(result.quarantined) == 1
    assert reason in result.quarantined["reason"].iloc[0]
    assert bad[0] not in set(result.good["ts"]) or bad[0] in (T0, T0 + H, T0 + 5 * H)
    assert len(result.good) == 3


def test_a_null_timestamp_is_quarantined() -> None:
    reasons = quarantined_reasons([good(0), [None, 1.0, 2.0, 0.5, 1.5, 1.0]])
    assert reasons == {None: "ts missing or not a number"}


def test_identical_repeats_are_one_candle_not_a_fault() -> None:
    result = validate_candles([good(0), good(1), good(1), good(2)], MARKET, T0, END, POLICY)
    assert (len(result.good), result.repeats, len(result.quarantined)) == (3, 1, 0)


def test_versions_of_one_open_time_keep_the_most_precise_in_any_order() -> None:
    rounded = [T0 + H, 11327.52, 11349.0, 11321.84, 11343.95, 721.93]
    precise = [T0 + H, 11327.51, 11349.0, 11321.84, 11343.95, 721.929412]
    for rows in ([good(0), rounded, precise], [good(0), precise, rounded]):
        result = validate_candles(rows, MARKET, T0, END, POLICY)
        kept = result.good[result.good["ts"] == T0 + H].iloc[0]
        assert kept["volume"] == 721.929412
        assert kept["open"] == 11327.51
        assert result.quarantined["raw"].tolist() == [rounded]
        assert "superseded" in result.quarantined["reason"].iloc[0]
        assert result.failed == 0


def test_a_flash_crash_is_flagged_and_kept() -> None:
    crash = [T0 + 2 * H, 300.0, 310.0, 144.0, 290.0, 50.0]  # low 52% under the high
    result = validate_candles([good(0), good(1), crash], MARKET, T0, END, POLICY)
    assert result.flagged == [T0 + 2 * H]
    assert T0 + 2 * H in set(result.good["ts"])
    assert result.quarantined.empty


def test_every_failed_check_of_a_row_is_named() -> None:
    reasons = quarantined_reasons([good(0), [T0 + H, -1.0, -2.0, 5.0, 1.0, -3.0]])
    assert {"open <= 0", "high <= 0", "volume < 0", "high < low"} <= set(
        reasons[T0 + H].split("; ")
    )
