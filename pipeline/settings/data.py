"""How ingested candles are validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ValidationSettings(BaseModel):
    """How strict candle validation is."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_bad_fraction: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="a batch with a larger share of bad rows fails (after quarantining them)",
    )
    flash_move: float = Field(
        default=0.3, gt=0, description="candles whose range high/low - 1 exceeds this are flagged"
    )
