"""What the nightly retraining trains by default."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.settings.exchanges import Market
from pipeline.settings.schedules import check_cron, check_timezone

TRAINING_FEATURES = (
    "ret_1",
    "ret_4",
    "ret_12",
    "ret_24",
    "ret_48",
    "ret_168",
    "ret_720",
    "vol_24",
    "vol_168",
    "trend_168",
    "trend_720",
    "drawdown_720",
    "range_1",
    "range_24",
    "close_pos",
    "volume_z_24",
    "rsi_14",
)


class TrainingSettings(BaseModel):
    """What the nightly retraining does by default (the train DAG's params start here)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schedule: str = Field(
        default="0 2 * * *",
        description="when the train DAG runs: a cron expression or a preset (@daily, "
        "@weekly), in schedule_timezone; e.g. '30 23 * * 1-5' for 23:30 on weekdays",
    )
    schedule_timezone: str = Field(
        default="UTC", description="IANA time zone of schedule, e.g. America/New_York"
    )
    algorithms: tuple[Literal["dqn", "a2c"], ...] = Field(
        default=("a2c",),
        description="agents trained each night (DQN ensembles lost up to a third of the "
        "account in walk-forward folds where A2C ones did not: add dqn to compare)",
    )
    markets: tuple[Market, ...] = Field(
        default=(), description="markets trained each night; empty = the first of markets"
    )
    train_days: int = Field(default=730, ge=7, description="training window length")
    valid_days: int = Field(default=90, ge=2, description="validation window after it")
    features: tuple[str, ...] = Field(
        default=TRAINING_FEATURES, description="FeatureSpec feature names the agents observe"
    )
    decision_every: int = Field(
        default=24,
        ge=1,
        description="candles between decisions (24 x 1h = daily, at 00:00 UTC); "
        "fewer, slower decisions trade less noise",
    )
    dqn_steps: int = Field(default=100_000, ge=1, description="DQN environment steps")
    a2c_steps: int = Field(default=2_000_000, ge=1, description="A2C environment steps")
    dqn_envs: int = Field(default=8, ge=1, description="parallel episodes for DQN")
    a2c_envs: int = Field(default=256, ge=1, description="parallel episodes for A2C")
    episode_length: int = Field(default=60, ge=2, description="decisions per episode")
    shorting: bool = Field(default=False, description="allow short positions (action -1)")
    position_steps: int = Field(
        default=1,
        ge=1,
        le=10,
        description="positions the agent picks from, per side: 1 = flat or all in; "
        "2 = flat, half or all in (0, 0.5, 1; and -0.5, -1 when shorting); n = steps of 1/n",
    )
    position_rule: Literal["argmax", "expected"] = Field(
        default="expected",
        description="how an A2C policy's action probabilities become a position: argmax = "
        "the likeliest action's; expected = the probability-weighted mean of the actions' "
        "positions, so an ensemble split between flat and long holds part of the position "
        "instead of flipping on a near tie (in the walk-forward report the five seeds' fold "
        "returns then agreed within 10 points in 8 of 8 folds instead of 6; DQN's Q-values "
        "have no probabilities: argmax)",
    )
    fee_bps: float = Field(default=10.0, ge=0, description="taker fee, basis points")
    slippage_bps: float = Field(default=5.0, ge=0, description="slippage, basis points")
    borrow_bps_per_hour: float = Field(
        default=0.1,
        ge=0,
        description="a short's borrow interest per hour, basis points of its notional, in "
        "training and every backtest (0.1 = serving.borrow_rate_hourly's 0.00001 of paper "
        "margin; Binance's cross margin is 0.024%/day = 0.1 bps/h on BTC)",
    )
    seed: int = Field(default=0, ge=0, description="seed of weights, exploration, episodes")
    target_volatility: float | None = Field(
        default=0.2,
        gt=0,
        description="size every position to this annualized volatility (the week's realized "
        "volatility, see volatility_features), capped at the action map's position; null: "
        "unscaled (0.2 rather than 0.3: in the walk-forward report the five seeds' fold "
        "returns agreed in 6 of 8 folds instead of 4, drawdowns fell by a third, Sharpe held)",
    )
    volatility_features: tuple[str, ...] = Field(
        default=("vol_168",),
        min_length=1,
        description="the realized volatility that sizes positions is the largest of these "
        "features, each one of features (the week's, vol_168; adding the month's, vol_720, "
        "to both lost Sharpe and fold returns in the walk-forward report)",
    )
    downside_penalty: float = Field(
        default=1.0,
        ge=0,
        description="reward shaping: a losing step's log growth weighs 1 + this (0: plain; "
        "1, losses count twice: in the walk-forward report the worst fold drawdown fell from "
        "14% to 10% and the worst fold from -9% to -6% for every seed, Sharpe held at 2.0)",
    )
    folds: int = Field(
        default=4,
        ge=1,
        description="walk-forward folds the train DAG scores each algorithm on: consecutive "
        "validation windows of valid_days, each trained only on candles before it; the "
        "newest fold's model is the candidate",
    )
    ensemble: int = Field(
        default=5,
        ge=1,
        description="models trained per algorithm with different seeds and exported as one "
        "policy that averages their action probabilities (A2C) or Q-values (DQN)",
    )

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        return check_cron(value, "0 2 * * *")

    @field_validator("schedule_timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        return check_timezone(value)
