"""Walk-forward scoring: folds chained out of sample, selection by median fold Sharpe."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from pipeline.errors import DataValidationError
from pipeline.learn.walk_forward import score, select
from pipeline.learn.windows import walk_forward_folds

DAY = 86_400_000


def fold(start_day: int, returns: list[float], positions: float = 1.0) -> dict:
    n = len(returns)
    flat = {"returns": [0.0] * n, "positions": [0.0] * n}
    return {
        "valid": [start_day * DAY, (start_day + n) * DAY],
        "series": {
            "ts": list(range(n)),
            "policy": {"returns": returns, "positions": [positions] * n},
            "buy_and_hold": {"returns": returns, "positions": [1.0] * n},
            "flat": flat,
        },
    }


def noisy(seed: int, mean: float, n: int = 30) -> list[float]:
    return np.random.default_rng(seed).normal(mean, 0.02, n).tolist()


def test_chained_returns_compound_across_folds() -> None:
    folds = [fold(0, [0.1] + [0.0] * 11), fold(12, [-0.5] + [0.0] * 11)]
    result = score(folds, DAY)
    assert result["chained"]["total_return"] == pytest.approx(1.1 * 0.5 - 1)
    assert result["worst_return"] == pytest.approx(-0.5)
    assert result["worst_drawdown"] == pytest.approx(0.5)
    assert [f["total_return"] for f in result["folds"]] == pytest.approx([0.1, -0.5])


def test_median_fold_sharpe_is_the_middle_fold() -> None:
    folds = [fold(i * 30, noisy(i, mean)) for i, mean in enumerate((0.01, -0.01, 0.002))]
    result = score(folds, DAY)
    sharpes = sorted(f["sharpe"] for f in result["folds"])
    assert result["median_sharpe"] == pytest.approx(sharpes[1])


def test_folds_are_scored_in_time_order_whatever_order_they_come_in() -> None:
    folds = [fold(0, noisy(1, 0.01)), fold(30, noisy(2, -0.01))]
    assert score(folds[::-1], DAY)["folds"] == score(folds, DAY)["folds"]


def test_overlapping_folds_are_refused() -> None:
    with pytest.raises(DataValidationError, match="overlap"):
        score([fold(0, noisy(1, 0.0)), fold(10, noisy(2, 0.0))], DAY)


def test_baselines_are_chained_beside_the_policy() -> None:
    result = score([fold(0, noisy(1, 0.01)), fold(30, noisy(2, 0.0))], DAY)
    assert set(result["baselines"]) == {"buy_and_hold", "flat"}
    assert result["baselines"]["flat"]["total_return"] == 0.0
    assert result["baselines"]["buy_and_hold"]["sharpe"] == pytest.approx(
        result["chained"]["sharpe"]
    )


def test_selection_picks_the_best_median_and_deflates_by_the_candidates() -> None:
    good = [fold(i * 30, noisy(10 + i, 0.006)) for i in range(4)]
    bad = [fold(i * 30, noisy(20 + i, -0.002)) for i in range(4)]
    chosen = select({"dqn": bad, "a2c": good}, DAY)
    assert chosen["best"] == "a2c"
    alone = score(good, DAY)
    deflated = chosen["scores"]["a2c"]["confidence"]
    assert deflated["n_trials"] == 2
    assert deflated["dsr"] < alone["confidence"]["dsr"]
    assert deflated["psr"] == pytest.approx(alone["confidence"]["psr"])


def test_early_folds_train_on_the_history_there_is() -> None:
    end = int(datetime(2021, 3, 15, tzinfo=UTC).timestamp() * 1000)
    earliest = int(datetime(2017, 9, 17, 4, tzinfo=UTC).timestamp() * 1000)
    folds = walk_forward_folds(end, 8, 730, 90, 3_600_000, earliest)
    first_train, first_valid = folds[0]
    assert first_train.start == earliest + 20 * 3_600_000  # the next midnight
    assert first_train.end == first_valid.start
    assert all(train.end - train.start == 730 * DAY for train, _ in folds[3:])


def test_a_fold_without_enough_history_is_refused_with_the_fix() -> None:
    end = int(datetime(2021, 3, 15, tzinfo=UTC).timestamp() * 1000)
    earliest = int(datetime(2020, 6, 1, tzinfo=UTC).timestamp() * 1000)
    with pytest.raises(DataValidationError, match=r"fewer folds.*backfill earlier history"):
        walk_forward_folds(end, 4, 730, 90, 3_600_000, earliest)
