"""The trader's refusals before it trades (live switches, keys) and its deterministic client
order ids."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.settings import Settings
from serving.kernel.broker import client_order_id
from tests.support.policies import MARKET, NAME


def test_live_needs_the_trading_mode_switch_as_well_as_the_flag(tmp_path: Path) -> None:
    from pipeline.errors import ConfigurationError
    from serving.startup import build

    settings = Settings(var_dir=tmp_path, markets=[MARKET])
    with pytest.raises(ConfigurationError, match="CRYPTOBOTS_TRADING_MODE=live"):
        build(settings, live=True, environ={})


def test_live_without_keys_is_refused_naming_the_setting(tmp_path: Path) -> None:
    from pipeline.errors import ConfigurationError
    from serving.startup import build

    settings = Settings(var_dir=tmp_path, markets=[MARKET], trading_mode="live")
    with pytest.raises(ConfigurationError, match="CRYPTOBOTS_EXCHANGES__BINANCE__CREDENTIALS"):
        build(settings, live=True, environ={})


def test_the_client_order_id_is_deterministic_and_fits_binance() -> None:
    one = client_order_id(NAME, 3, MARKET, 1_700_000_000_000, "buy")
    assert one == client_order_id(NAME, 3, MARKET, 1_700_000_000_000, "buy")
    assert one != client_order_id(NAME, 4, MARKET, 1_700_000_000_000, "buy")
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,36}", one)
