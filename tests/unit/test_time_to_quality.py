"""The time-to-quality bench's curve arithmetic: a learner's curve is the median over
folds of each fold's latest score, and its time to quality the first time that median
reaches the quality every learner reached."""

from __future__ import annotations

import math

from bench.time_to_quality import end_points, median_curve, time_to_reach


def test_the_curve_is_the_median_of_each_folds_latest_score_a_fold_not_yet_scored_lowest() -> None:
    folds = [[(1.0, 0.5), (3.0, 2.0)], [(2.0, 1.0)], [(1.5, -1.0), (2.5, 3.0)]]
    curve = median_curve(folds)
    assert [t for t, _ in curve] == [1.0, 1.5, 2.0, 2.5, 3.0]
    assert curve[0][1] == -math.inf, "two folds not scored yet"
    assert [score for _, score in curve[1:]] == [-1.0, 0.5, 1.0, 2.0]


def test_time_to_quality_is_the_first_time_the_curve_reaches_it() -> None:
    curve = [(1.0, 0.2), (2.0, 1.1), (3.0, 0.9), (4.0, 1.4)]
    assert time_to_reach(curve, 1.0) == 2.0
    assert time_to_reach(curve, 1.4) == 4.0
    assert time_to_reach(curve, 2.0) is None


def test_end_points_give_the_best_score_when_first_reached_and_the_last() -> None:
    curve = [(1.0, 0.2), (2.0, 1.4), (3.0, 1.4), (4.0, 0.9)]
    assert end_points(curve) == {"best": 1.4, "best_at": 2.0, "last": 0.9, "spent": 4.0}


def test_a_score_is_held_from_the_first_time_after_which_it_never_falls_below() -> None:
    from bench.time_to_quality import time_to_hold

    curve = [(1.0, 1.5), (2.0, 0.8), (3.0, 1.1), (4.0, 1.2)]
    assert time_to_hold(curve, 1.0) == 3.0, "the lucky first score does not count"
    assert time_to_hold(curve, 0.5) == 1.0
    assert time_to_hold(curve, 1.3) is None
