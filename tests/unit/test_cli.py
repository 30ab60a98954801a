"""`python -m pipeline` refusals and output that need no database: a bad setting, masked
passwords, a malformed plant."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main


def test_an_invalid_setting_is_one_error_line_and_exit_code_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CRYPTOBOTS_TRADING_MODE", "yolo")
    assert main(["settings"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: invalid setting CRYPTOBOTS_TRADING_MODE='yolo'")


def test_settings_command_masks_the_database_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CRYPTOBOTS_DB_URL", "postgresql://trader:hunter2@db:5432/cb")
    assert main(["settings"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["db_url"] == "postgresql+psycopg2://trader:***@db:5432/cb"


def test_simulator_refuses_a_malformed_plant_naming_the_format(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["simulator", "--consistent-books", "--plant", "ETHBTC:forty"])
    assert exited.value.code == 2
    assert "argument --plant: 'ETHBTC:forty': write SYMBOL:BPS:SECONDS" in capsys.readouterr().err
