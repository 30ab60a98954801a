"""Deterministic ids of the arbitrage trader's opportunities and legs: a restart finds
what it wrote (and maybe sent) under the same ids, so no leg is ever sent twice."""

from __future__ import annotations

import hashlib

from pipeline.arbitrage import Cycle

CLIENT_ID_PREFIX = "ab"


def opportunity_id(account: str, exchange: str, cycle: Cycle, detected_ms: int) -> str:
    """Deterministic id of an opportunity: account, exchange, legs and detection time."""
    legs = ">".join(f"{leg.symbol}:{leg.side}" for leg in cycle.legs)
    return hashlib.sha256(f"{account}|{exchange}|{legs}|{detected_ms}".encode()).hexdigest()[:32]


def leg_client_id(opportunity: str, seq: int) -> str:
    """Deterministic client order id of leg `seq` of an opportunity (32 characters)."""
    digest = hashlib.sha256(f"{opportunity}|{seq}".encode()).hexdigest()[:30]
    return f"{CLIENT_ID_PREFIX}{digest}"
