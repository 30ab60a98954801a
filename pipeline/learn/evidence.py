"""How sure a backtest is: probabilistic and deflated Sharpe ratios, bootstrap intervals.

A Sharpe ratio measured on a few hundred returns is a noisy estimate, and the best of
several candidates is biased upwards by the choice itself. This module says how much
a measured Sharpe ratio can be trusted, after Bailey and Lopez de Prado:

- `probabilistic_sharpe_ratio` (PSR): the probability that the true Sharpe ratio
  exceeds a benchmark, given the sample length and the returns' skewness and
  kurtosis (fat tails and negative skew make a Sharpe ratio less certain).
- `deflated_sharpe_ratio` (DSR): the PSR against the Sharpe ratio the best of
  `n_trials` candidates would reach by luck alone (the expected maximum of
  `n_trials` draws whose spread is the spread of the candidates' Sharpe ratios).
- `bootstrap_sharpe_interval`: a circular block bootstrap of the returns (blocks keep
  the serial dependence of positions held over several steps) and the percentile
  interval of the annualized Sharpe ratio; `drawdown_quantile` draws paths the same
  way and reads the quantile of their maximum drawdown over a given horizon, which
  is what a champion watch compares its live drawdown against.

Sharpe ratios here are per step (not annualized) unless a name says otherwise, as
in the papers' formulas. Only numpy and scipy are imported. The bootstrap is a few
lines of numpy; the `arch` package does it too but would bring statsmodels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats

from pipeline.errors import DataValidationError

EULER_GAMMA = 0.5772156649015329
MIN_RETURNS = 10


def _returns(values: npt.ArrayLike, what: str = "returns") -> np.ndarray:
    r = np.asarray(values, dtype=np.float64)
    if r.ndim != 1 or r.shape[0] < MIN_RETURNS:
        raise DataValidationError(
            f"{what}: {r.shape} is too short for a confidence figure; "
            f"at least {MIN_RETURNS} returns are needed (widen the window)"
        )
    if not np.isfinite(r).all():
        raise DataValidationError(f"{what}: NaN or infinite values; drop or fill them first")
    return r


def sharpe_per_step(returns: npt.ArrayLike) -> float:
    """Mean over population standard deviation of the step returns; 0.0 when constant."""
    r = np.asarray(returns, dtype=np.float64)
    std = float(r.std())
    return float(r.mean()) / std if std > 1e-12 else 0.0


def psr_from_moments(
    sharpe: float, n: int, skewness: float, kurtosis: float, benchmark: float = 0.0
) -> float:
    """PSR of a per-step Sharpe ratio measured on `n` returns with the given skewness
    and (non-excess, normal = 3) kurtosis, against a per-step benchmark Sharpe ratio."""
    if n < 2:
        raise DataValidationError(f"a probabilistic Sharpe ratio needs n >= 2 returns, got {n}")
    spread = 1.0 - skewness * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    spread = max(spread, 1e-12)
    return float(stats.norm.cdf((sharpe - benchmark) * math.sqrt(n - 1) / math.sqrt(spread)))


def _moments(r: np.ndarray) -> tuple[float, float, float]:
    if float(r.std()) <= 1e-12:
        return 0.0, 0.0, 3.0
    return (
        sharpe_per_step(r),
        float(stats.skew(r)),
        float(stats.kurtosis(r, fisher=False)),
    )


def probabilistic_sharpe_ratio(returns: npt.ArrayLike, benchmark: float = 0.0) -> float:
    """Probability that the true per-step Sharpe ratio of `returns` exceeds `benchmark`."""
    r = _returns(returns)
    sharpe, skewness, kurtosis = _moments(r)
    if sharpe == 0.0 and float(r.std()) <= 1e-12:
        return 0.0 if benchmark >= 0 else 1.0
    return psr_from_moments(sharpe, r.shape[0], skewness, kurtosis, benchmark)


def expected_max_sharpe(n_trials: int, sharpe_variance: float) -> float:
    """The per-step Sharpe ratio the best of `n_trials` unskilled candidates reaches by
    luck, when their Sharpe ratios spread with `sharpe_variance` (0.0 for one trial)."""
    if n_trials < 1:
        raise DataValidationError(f"n_trials must be >= 1, got {n_trials}")
    if n_trials == 1 or sharpe_variance <= 0:
        return 0.0
    z = stats.norm.ppf
    return math.sqrt(sharpe_variance) * (
        (1.0 - EULER_GAMMA) * z(1.0 - 1.0 / n_trials)
        + EULER_GAMMA * z(1.0 - 1.0 / (n_trials * math.e))
    )


def sharpe_variance_of_estimate(sharpe: float, n: int, skewness: float, kurtosis: float) -> float:
    """Sampling variance of a per-step Sharpe ratio estimated on `n` returns."""
    return max(1.0 - skewness * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2, 1e-12) / (n - 1)


def deflated_sharpe_ratio(
    returns: npt.ArrayLike, n_trials: int, trial_sharpes: npt.ArrayLike | None = None
) -> float:
    """PSR of the chosen candidate's `returns` against the Sharpe ratio the best of
    `n_trials` would reach by luck. The spread of luck is the variance of the trials'
    per-step Sharpe ratios when at least two are given, else the sampling variance
    of this Sharpe ratio's estimate (what unskilled trials of this length would show)."""
    r = _returns(returns)
    sharpe, skewness, kurtosis = _moments(r)
    trials = None if trial_sharpes is None else np.asarray(trial_sharpes, dtype=np.float64)
    if trials is not None and trials.size >= 2:
        variance = float(trials.var(ddof=1))
    else:
        variance = sharpe_variance_of_estimate(sharpe, r.shape[0], skewness, kurtosis)
    benchmark = expected_max_sharpe(n_trials, variance)
    if float(r.std()) <= 1e-12:
        return 0.0
    return psr_from_moments(sharpe, r.shape[0], skewness, kurtosis, benchmark)


def default_block(n: int) -> int:
    """Block length of the bootstrap: about n^(1/3), at least 2 and at most n."""
    return int(min(n, max(2, round(n ** (1.0 / 3.0)))))


def block_bootstrap(
    returns: npt.ArrayLike,
    samples: int = 2000,
    block: int | None = None,
    length: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """`samples` circular block-bootstrap paths [samples, length] of `returns`."""
    r = _returns(returns)
    n = r.shape[0]
    length = length or n
    block = block or default_block(n)
    if block < 1 or samples < 1 or length < 1:
        raise ValueError(f"samples {samples}, block {block} and length {length} must be >= 1")
    rng = np.random.default_rng(seed)
    blocks = -(-length // block)
    starts = rng.integers(0, n, size=(samples, blocks))
    index = (starts[:, :, None] + np.arange(block)[None, None, :]) % n
    return r[index.reshape(samples, -1)[:, :length]]


def bootstrap_sharpe_interval(
    returns: npt.ArrayLike,
    periods_per_year: float,
    confidence: float = 0.9,
    samples: int = 2000,
    block: int | None = None,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of the annualized Sharpe ratio over block-bootstrap paths."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    paths = block_bootstrap(returns, samples, block, seed=seed)
    std = paths.std(axis=1)
    sharpes = np.where(std > 1e-12, paths.mean(axis=1) / np.maximum(std, 1e-300), 0.0)
    sharpes *= math.sqrt(periods_per_year)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(sharpes, [tail, 1.0 - tail])
    return float(low), float(high)


def max_drawdowns(paths: np.ndarray) -> np.ndarray:
    """Maximum drawdown (a positive fraction) of each row of simple returns."""
    equity = np.cumprod(1.0 + np.asarray(paths, dtype=np.float64), axis=-1)
    peak = np.maximum(np.maximum.accumulate(equity, axis=-1), 1.0)
    return np.max(1.0 - equity / peak, axis=-1)


def drawdown_quantile(
    returns: npt.ArrayLike,
    horizon: int,
    quantile: float = 0.95,
    samples: int = 2000,
    block: int | None = None,
    seed: int = 0,
) -> float:
    """The `quantile` of the maximum drawdown over `horizon` steps of block-bootstrap
    paths of `returns`: how deep a drawdown of that length the backtest makes usual."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1 step, got {horizon}")
    paths = block_bootstrap(returns, samples, block, length=horizon, seed=seed)
    return float(np.quantile(max_drawdowns(paths), quantile))


WATCH_HORIZONS = (5, 10, 20, 40, 60, 90, 120, 180, 270, 365)


def drawdown_expectations(
    returns: npt.ArrayLike,
    source: str,
    horizons: tuple[int, ...] = WATCH_HORIZONS,
    quantile: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """What a backtest makes usual, for the champion watch: per horizon (a number of
    decisions), the `quantile` of the maximum drawdown over that many decisions."""
    r = _returns(returns)
    return {
        "horizons": list(horizons),
        "drawdown": [drawdown_quantile(r, h, quantile, seed=seed) for h in horizons],
        "quantile": quantile,
        "source": source,
        "steps": int(r.shape[0]),
    }


@dataclass(frozen=True)
class Confidence:
    """How sure a backtest's Sharpe ratio is (Sharpe figures annualized)."""

    sharpe: float
    psr: float
    """P(true Sharpe > 0)."""
    dsr: float
    """P(true Sharpe > what the best of n_trials reaches by luck)."""
    n_trials: int
    sharpe_low: float
    sharpe_high: float
    """Block-bootstrap interval of the annualized Sharpe ratio (at `confidence`)."""
    confidence: float
    steps: int

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-able dict."""
        return asdict(self)


def confidence(
    returns: npt.ArrayLike,
    periods_per_year: float,
    n_trials: int = 1,
    trial_sharpes: npt.ArrayLike | None = None,
    level: float = 0.9,
    seed: int = 0,
) -> Confidence:
    """PSR, DSR and the bootstrap interval of one backtest's returns."""
    r = _returns(returns)
    per_step = None if trial_sharpes is None else np.asarray(trial_sharpes, np.float64)
    if per_step is not None:
        per_step = per_step / math.sqrt(periods_per_year)
    low, high = bootstrap_sharpe_interval(r, periods_per_year, level, seed=seed)
    return Confidence(
        sharpe=sharpe_per_step(r) * math.sqrt(periods_per_year),
        psr=probabilistic_sharpe_ratio(r),
        dsr=deflated_sharpe_ratio(r, n_trials, per_step),
        n_trials=n_trials,
        sharpe_low=low,
        sharpe_high=high,
        confidence=level,
        steps=int(r.shape[0]),
    )
