"""The gates a candidate model passes to become champion."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PromotionSettings(BaseModel):
    """The gates a candidate passes to become champion (unless forced with a reason)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window_days: int = Field(
        default=90, ge=2, description="the most recent window both models are re-evaluated on"
    )
    sharpe_margin: float = Field(
        default=0.1, description="the candidate's Sharpe must beat the champion's by this"
    )
    max_drawdown: float = Field(
        default=0.5, gt=0, le=1, description="the candidate's max drawdown must stay within this"
    )
    min_dsr: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description="evidence gate, every model including the first: the deflated Sharpe ratio "
        "of its walk-forward folds (or, without them, the probabilistic Sharpe ratio on the "
        "promotion window) must reach this",
    )
    max_fold_drawdown: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description="evidence gate: the deepest drawdown of any walk-forward fold",
    )
    require_approval: bool = Field(
        default=False,
        description="a person approves every promotion in Airflow's Required Actions "
        "(always asked when trading_mode is live)",
    )
    approval_timeout_hours: float = Field(
        default=24.0, gt=0, description="an approval unanswered this long counts as a rejection"
    )
