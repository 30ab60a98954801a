"""The arbitrage study configuration the study tests share."""

from __future__ import annotations

from pipeline.arbitrage.cross import Transfer
from pipeline.arbitrage.study_config import StudyConfig

MINUTE = 60_000


def config(threshold_bps: float = 10.0, max_notional: float = 1_000.0) -> StudyConfig:
    return StudyConfig(
        threshold_bps=threshold_bps,
        taker_fee_bps=10.0,
        max_notional=max_notional,
        home="USDT",
        withdrawals={"BTC": Transfer(0.0002, 30), "USD": Transfer(0.0, 60)},
        quote_rates={"USD": 1.0, "USDT": 1.0},
        volume_share=0.01,
    )
