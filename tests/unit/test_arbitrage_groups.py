"""The arbitrage_report DAG's groups: one study per configured group, keyed in order."""

from __future__ import annotations


def test_group_keys_come_from_the_settings_in_their_order() -> None:
    from pipeline.settings import load_settings

    arbitrage = load_settings().arbitrage
    assert arbitrage.group_keys() == [
        *(f"triangle:{i}" for i in range(len(arbitrage.triangles))),
        *(f"cross:{i}" for i in range(len(arbitrage.venue_groups))),
    ]
