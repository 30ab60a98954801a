"""Training and validation windows: one pair before a moment, or walk-forward folds.

A window is half-open, [start, end) in ms since the epoch (UTC); validation always
comes after training, on a disjoint window, and folds follow one another.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import ConfigurationError, DataValidationError
from pipeline.timeutil import DAY_MS, iso


@dataclass(frozen=True)
class Window:
    """A half-open time window [start, end) in ms since the epoch, UTC."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ConfigurationError(f"window {self} ends before it starts")

    def __str__(self) -> str:
        return f"[{iso(self.start)}, {iso(self.end)})"


def windows_before(
    end_ms: int,
    train_days: int,
    valid_days: int,
    timeframe_ms: int,
    *,
    train_start: int | None = None,
    train_end: int | None = None,
    valid_start: int | None = None,
) -> tuple[Window, Window]:
    """(train, valid) windows ending at `end_ms` (floored to the timeframe), valid last:
    `valid_days` of validation after `train_days` of training, unless a boundary is given
    (a given training end is also where validation starts)."""
    end = end_ms - end_ms % timeframe_ms
    valid_start = valid_start or train_end or end - valid_days * DAY_MS
    train_end = train_end or valid_start
    train_start = train_start or train_end - train_days * DAY_MS
    return Window(train_start, train_end), Window(valid_start, end)


MIN_TRAIN_DAYS = 180


def walk_forward_folds(
    end_ms: int,
    folds: int,
    train_days: int,
    valid_days: int,
    timeframe_ms: int,
    earliest_ms: int | None = None,
    min_train_days: int = MIN_TRAIN_DAYS,
) -> list[tuple[Window, Window]]:
    """`folds` consecutive validation windows ending at `end_ms`, each with the training
    window right before it (chronological; validation windows never overlap).

    With `earliest_ms` (the first candle a training window may start at, after the
    features' look-back), a training window reaching further back starts there
    instead: an early fold trains on the history there is. A fold left with fewer than
    `min_train_days` (or `train_days`, if smaller) of training is refused by name.
    """
    if folds < 1:
        raise ConfigurationError(f"walk-forward needs at least one fold, got {folds}")
    end = end_ms - end_ms % timeframe_ms
    result = []
    for i in range(folds, 0, -1):
        fold_end = end - (i - 1) * valid_days * DAY_MS
        train, valid = windows_before(fold_end, train_days, valid_days, timeframe_ms)
        if earliest_ms is not None and train.start < earliest_ms:
            start = earliest_ms + (-earliest_ms) % DAY_MS
            need = min(min_train_days, train_days)
            if train.end - start < need * DAY_MS:
                raise DataValidationError(
                    f"walk-forward fold {folds - i + 1} of {folds} (validation {valid}) has "
                    f"only {max(train.end - start, 0) / DAY_MS:.0f} days of candles to train "
                    f"on after {iso(earliest_ms)}, fewer than {need}: use fewer folds, "
                    "shorter validation windows, or backfill earlier history"
                )
            train = Window(start, train.end)
        result.append((train, valid))
    return result
