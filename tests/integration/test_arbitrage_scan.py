"""Cross-exchange spreads on live books: one simulator per venue, each its own exchange in
settings through ccxt's binance class; a planted premium on one venue is reported with
the inventory it needs on each side, and nothing is sent."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest

from pipeline.arbitrage.scan import render, scan
from pipeline.cli import main
from pipeline.exchanges.simulator.app import Running
from pipeline.settings import Settings, load_settings

GROUP = ["binanceus:BTC/USDC:1m", "kraken:BTC/USDC:1m"]


@pytest.fixture
def venues(
    simulator: Callable[..., AbstractContextManager[Running]],
) -> Iterator[dict[str, Running]]:
    with (
        simulator(exchange="binanceus", shift_to_now=True) as binanceus,
        simulator(exchange="kraken", shift_to_now=True) as kraken,
    ):
        yield {"binanceus": binanceus, "kraken": kraken}


def settings_for(venues: dict[str, Running], tmp_path: Path) -> Settings:
    return load_settings(
        var_dir=tmp_path / "var",
        exchanges={name: {"ccxt_id": "binance", "url": sim.url} for name, sim in venues.items()},
        markets=GROUP,
        arbitrage={"venue_groups": [GROUP], "max_cycle_notional": 1000.0},
    )


def test_venues_quoting_the_same_price_offer_nothing_after_costs(
    venues: dict[str, Running], tmp_path: Path
) -> None:
    report = scan(settings_for(venues, tmp_path), min_spread_bps=0.0)
    [group] = report["groups"]
    assert len(group["quotes"]) == 2
    assert group["opportunities"] == []
    assert group["skipped"] == []


def test_a_premium_on_one_venue_is_reported_with_the_inventory_each_side_needs(
    venues: dict[str, Running], tmp_path: Path
) -> None:
    settings = settings_for(venues, tmp_path)

    def buy_binanceus_sell_kraken(report: dict) -> dict:
        [pair] = [
            o
            for o in report["groups"][0]["opportunities"]
            if (o["buy_venue"], o["sell_venue"]) == ("binanceus", "kraken")
        ]
        return pair

    before = buy_binanceus_sell_kraken(scan(settings, min_spread_bps=-1000.0))
    httpx.post(
        f"{venues['kraken'].url}/sim/plant",
        json={"symbol": "BTCUSDC", "bps": 150.0, "seconds": 120},
    ).raise_for_status()
    report = scan(settings, min_spread_bps=0.0)
    [best] = report["groups"][0]["opportunities"]
    assert best == buy_binanceus_sell_kraken(report)
    assert best["spread_bps"] == pytest.approx(before["spread_bps"] + 150.0, abs=2.0)
    btc, usdc = settings.arbitrage.withdrawals["BTC"], settings.arbitrage.withdrawals["USDC"]
    withdrawals = (btc.fee * best["buy_price"] + usdc.fee) / 1000.0 * 1e4
    gross = (best["sell_price"] / best["buy_price"] * 0.999**2 - 1) * 1e4
    assert best["spread_bps"] == pytest.approx(gross - withdrawals, abs=0.01)
    assert best["quote_needed"] == pytest.approx(1000.0)
    assert best["base_needed"] == pytest.approx(1000.0 / best["buy_price"] * 0.999)
    assert best["rebalance_minutes"] == max(btc.minutes, usdc.minutes)
    for sim in venues.values():
        assert sim.exchange.accounts.accounts == {}, "a scan sent something"
    text = render(report)
    assert "nothing is sent or transferred" in text
    assert "buy BTC/USDC on binanceus" in text


def test_a_venue_not_in_settings_is_named_and_skipped(
    venues: dict[str, Running], tmp_path: Path
) -> None:
    settings = load_settings(
        var_dir=tmp_path / "var",
        exchanges={"binanceus": {"ccxt_id": "binance", "url": venues["binanceus"].url}},
        markets=GROUP[:1],
        arbitrage={"venue_groups": [GROUP]},
    )
    [group] = scan(settings)["groups"]
    assert group["opportunities"] == []
    assert "CRYPTOBOTS_EXCHANGES__KRAKEN__URL" in group["skipped"][0]


def test_cli_prints_the_scan_as_json(
    venues: dict[str, Running], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("CRYPTOBOTS_VAR_DIR", str(tmp_path / "var"))
    for name, sim in venues.items():
        monkeypatch.setenv(f"CRYPTOBOTS_EXCHANGES__{name.upper()}__URL", sim.url)
        monkeypatch.setenv(f"CRYPTOBOTS_EXCHANGES__{name.upper()}__CCXT_ID", "binance")
    monkeypatch.setenv("CRYPTOBOTS_ARBITRAGE__VENUE_GROUPS", json.dumps([GROUP]))
    monkeypatch.setenv("CRYPTOBOTS_MARKETS", ",".join(GROUP))
    assert main(["arbitrage", "scan", "--json", "--min-spread-bps", "-1000"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["groups"][0]["opportunities"]) == 2  # both directions, at any spread
