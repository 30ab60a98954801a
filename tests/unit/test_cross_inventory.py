"""Inventory drift across venues: a rebalance is proposed only when a venue's share of an
asset leaves its band, from the richest venue to the poorest, with its cost; and a
finished cross trade's outcome is what its fills say."""

from __future__ import annotations

import pytest

from serving.cross.inventory import proposals, shares
from serving.cross.ledger import outcome
from serving.cross.pair import Leg, Sent
from serving.kernel.execution import Execution

FEES = {"BTC": (0.0002, 30.0)}


def test_an_inventory_within_its_band_proposes_nothing() -> None:
    held = {"a": {"BTC": 0.12}, "b": {"BTC": 0.08}}
    assert shares(held, "BTC") == pytest.approx({"a": 0.6, "b": 0.4})
    assert proposals(held, ("BTC",), 0.3, FEES) == []


def test_a_drifted_asset_is_moved_from_the_richest_to_the_poorest_venue_at_its_fee() -> None:
    held = {"a": {"BTC": 0.19}, "b": {"BTC": 0.01}, "c": {"BTC": 0.1}}
    [move] = proposals(held, ("BTC", "USDC"), 0.2, FEES)
    assert (move.asset, move.source, move.target) == ("BTC", "a", "b")
    assert move.amount == pytest.approx(0.19 - 0.3 / 3)
    assert (move.withdrawal_fee, move.minutes) == (0.0002, 30.0)
    assert "move 0.09 BTC from a to b" in move.describe()


def test_an_asset_nobody_holds_proposes_nothing() -> None:
    assert proposals({"a": {}, "b": {"BTC": 0.0}}, ("BTC",), 0.1, FEES) == []


def sent(venue: str, side: str, amount: float, filled: float, price: float, seq: int) -> Sent:
    fee = filled * price * 0.001
    execution = Execution("filled" if filled else "rejected", filled, filled * price, fee, "quote")
    return Sent(Leg(venue, "BTC/USDC", side, amount, price, f"x{seq}", seq), execution, 0.0)


def test_a_trade_whose_legs_both_filled_is_done_with_the_fills_profit() -> None:
    legs = [sent("a", "buy", 0.01, 0.01, 100.0, 0), sent("b", "sell", 0.01, 0.01, 101.0, 1)]
    result = outcome(legs, [], conversion=1.0)
    assert result["status"] == "done"
    assert result["realized_start"] == pytest.approx(1.0 * 1.001)
    assert result["realized_end"] == pytest.approx(1.01 * 0.999)
    assert result["realized_profit"] == pytest.approx(1.01 * 0.999 - 1.001)


def test_a_trade_that_needed_an_exit_is_unwound_and_counts_the_exit() -> None:
    legs = [sent("a", "buy", 0.01, 0.01, 100.0, 0), sent("b", "sell", 0.01, 0.0, 101.0, 1)]
    exits = [sent("a", "sell", 0.01, 0.01, 99.0, 10)]
    result = outcome(legs, exits, conversion=1.0)
    assert result["status"] == "unwound"
    assert result["realized_profit"] == pytest.approx(0.99 * 0.999 - 1.001)
