"""The train stage's plain parts: requests refused before training, walk-forward folds,
the verdict, decision steps."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise

import numpy as np
import pytest

from pipeline.errors import ConfigurationError
from pipeline.learn.features import Candles
from pipeline.learn.prepare import decision_steps
from pipeline.learn.tables import verdict
from pipeline.learn.train_request import TrainRequest
from pipeline.learn.windows import Window, walk_forward_folds
from tests.support.training import BTC, TRAIN, VALID, ms, request


def test_validation_must_come_after_training() -> None:
    with pytest.raises(ConfigurationError, match="disjoint"):
        TrainRequest("dqn", BTC, TRAIN, Window(TRAIN.start, VALID.end), steps=1, num_envs=1)


def test_an_ensemble_of_no_members_is_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigurationError, match="CRYPTOBOTS_TRAINING__ENSEMBLE"):
        request("dqn", ensemble=0)


def test_expected_positions_are_refused_for_q_values_naming_the_setting() -> None:
    with pytest.raises(
        ConfigurationError, match=r"dqn's Q-values .*CRYPTOBOTS_TRAINING__POSITION_RULE"
    ):
        request("dqn", position_rule="expected")


@pytest.mark.parametrize(
    "change",
    [
        {"steps": 0},
        {"steps": -5},
        {"num_envs": 0},
        {"episode_length": 0},
        {"decision_every": 0},
        {"seed": -1},
    ],
)
def test_a_request_outside_its_ranges_is_refused_before_training(change: dict) -> None:
    [(name, value)] = change.items()
    with pytest.raises(
        ConfigurationError, match=rf"{name} must be a whole number >= \d, got {value}"
    ):
        request("a2c", **change)


def test_walk_forward_folds_are_consecutive_and_train_right_before_validating() -> None:
    folds = walk_forward_folds(ms("2020-01-01T05:30"), 3, 60, 30, 3_600_000)
    assert [valid.end for _, valid in folds] == [
        ms("2019-11-02T05:00"),
        ms("2019-12-02T05:00"),
        ms("2020-01-01T05:00"),
    ]
    for train, valid in folds:
        assert train.end == valid.start
        assert valid.end - valid.start == 30 * 86_400_000
    assert all(a[1].end == b[1].start for a, b in pairwise(folds))


def test_verdict_wins_only_above_every_baseline_without_a_deeper_drawdown() -> None:
    baselines = {
        "buy_and_hold": {"sharpe": 1.0, "max_drawdown": 0.2},
        "flat": {"sharpe": 0.0, "max_drawdown": 0.0},
        "momentum": {"sharpe": 0.5, "max_drawdown": 0.1},
    }
    assert verdict({"sharpe": 1.5, "max_drawdown": 0.1}, baselines) == "wins"
    assert verdict({"sharpe": 1.5, "max_drawdown": 0.3}, baselines) == "loses to drawdown"
    assert verdict({"sharpe": 0.7, "max_drawdown": 0.1}, baselines) == "loses to buy_and_hold"


def test_daily_decisions_fall_at_midnight_and_fill_at_the_next_open() -> None:
    hours = 24 * 4
    ts = ms("2020-01-01") + np.arange(hours, dtype=np.int64) * 3_600_000
    price = 100.0 + np.arange(hours)
    candles = Candles(ts, price, price + 1, price - 1, price + 0.5, np.ones(hours))
    features = np.arange(hours, dtype=float)[:, None]
    window = Window(ms("2020-01-01"), ms("2020-01-05"))
    step_ts, opens, closes, rows = decision_steps(candles, features, window, 3_600_000, 24)
    assert [datetime.fromtimestamp(t / 1000, UTC).hour for t in step_ts] == [23] * 4
    np.testing.assert_array_equal(rows[:, 0], [23, 47, 71, 95])
    np.testing.assert_array_equal(closes, price[[23, 47, 71, 95]] + 0.5)
    np.testing.assert_array_equal(opens[1:], price[[24, 48, 72]])
