"""Every flag is checked where it is parsed: the error names the flag as typed, says what
is wrong and the fix in two lines, exits 2, and nothing is opened, stored or started."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from pipeline import arguments
from pipeline.cli import main
from pipeline.settings import Market


@pytest.fixture
def var_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    var = tmp_path / "var"
    monkeypatch.setenv("CRYPTOBOTS_VAR_DIR", str(var))
    monkeypatch.setenv("CRYPTOBOTS_DB_URL", f"sqlite:///{var / 'cryptobots.db'}")
    return var


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the CLI expecting a refusal at parse time; its stderr."""
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    assert exited.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--steps", "0"),
        ("--steps", "-5"),
        ("--decision-every", "0"),
        ("--envs", "0"),
        ("--episode-length", "0"),
        ("--walk-forward", "-1"),
        ("--walk-forward", "0"),
        ("--ensemble", "0"),
        ("--seed", "-1"),
        ("--steps", "lots"),
    ],
)
def test_train_refuses_a_bad_budget_before_opening_anything(
    capsys: pytest.CaptureFixture[str], var_dir: Path, flag: str, value: str
) -> None:
    err = refused(capsys, "train", flag, value)
    assert f"argument {flag}: " in err
    assert repr(value) in err or value in err
    assert len(err.strip().splitlines()) == 2
    assert not var_dir.exists(), "nothing may be created for a refused command"


def test_train_refuses_seeds_that_are_not_whole_numbers(
    capsys: pytest.CaptureFixture[str], var_dir: Path
) -> None:
    err = refused(capsys, "train", "--walk-forward", "2", "--seeds", "0,one")
    assert "argument --seeds: '0,one'" in err
    assert "e.g. 0,1,2,3,4" in err


def test_seeds_without_a_walk_forward_are_refused(
    capsys: pytest.CaptureFixture[str], var_dir: Path
) -> None:
    assert main(["train", "--seeds", "0,1"]) == 2
    assert "--seeds replays several seeds of --walk-forward N" in capsys.readouterr().err
    assert not var_dir.exists()


def test_a_bad_market_flag_is_named_as_typed_without_pydantic_text(
    capsys: pytest.CaptureFixture[str], var_dir: Path
) -> None:
    err = refused(capsys, "backfill", "--market", "binance:BTCUSDT:1h", "--start", "2020-01-01",
                  "--end", "2020-01-02")  # fmt: skip
    assert "argument --market: symbol 'BTCUSDT' is not valid: write BASE/QUOTE" in err
    assert "type=" not in err
    assert "pydantic" not in err
    assert "CRYPTOBOTS_" not in err


def test_a_date_that_is_not_iso_names_its_flag_and_an_example(
    capsys: pytest.CaptureFixture[str], var_dir: Path
) -> None:
    err = refused(capsys, "backfill", "--market", "binance:BTC/USDT:1h", "--start", "yesterday",
                  "--end", "2020-01-02")  # fmt: skip
    assert "argument --start: 'yesterday' is not an ISO date" in err
    assert "2020-01-01" in err


def test_a_backfill_that_ends_before_it_starts_is_refused(
    capsys: pytest.CaptureFixture[str], var_dir: Path
) -> None:
    code = main(["backfill", "--market", "binance:BTC/USDT:1h", "--start", "2020-01-02",
                 "--end", "2020-01-01"])  # fmt: skip
    assert code == 2
    assert "--end 2020-01-01T00:00Z is not after --start" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "ten"])
def test_arbitrage_scan_refuses_a_spread_that_is_not_a_finite_number(
    capsys: pytest.CaptureFixture[str], var_dir: Path, value: str
) -> None:
    err = refused(capsys, "arbitrage", "scan", "--min-spread-bps", value, "--json")
    assert "argument --min-spread-bps: " in err


def test_arbitrage_scan_with_no_second_venue_says_nothing_was_scanned(
    capsys: pytest.CaptureFixture[str], var_dir: Path
) -> None:
    assert main(["arbitrage", "scan", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "nothing was scanned" in captured.err
    assert "'bitstamp' is not configured" in captured.err
    assert "CRYPTOBOTS_ARBITRAGE__VENUE_GROUPS" in captured.err


@pytest.fixture
def secrets(var_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where a remote worker's secrets file goes, with the settings such a worker needs."""
    monkeypatch.setenv("CRYPTOBOTS_DB_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    monkeypatch.setenv("CRYPTOBOTS_ARTIFACT_ROOT", "s3://models/cryptobots")
    return tmp_path / "secrets.json"


def test_worker_refuses_malformed_secrets_naming_the_file(
    capsys: pytest.CaptureFixture[str], secrets: Path
) -> None:
    secrets.write_text('{"fernet_key": "abc",')
    code = main(["worker", "--api-url", "http://airflow-host:8080", "--secrets", str(secrets)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{secrets} is not an Airflow secrets file" in err
    assert "Traceback" not in err


def test_worker_refuses_secrets_that_lack_a_key(
    capsys: pytest.CaptureFixture[str], secrets: Path
) -> None:
    secrets.write_text(json.dumps({"fernet_key": "abc", "jwt_secret": "def"}))
    assert main(["worker", "--api-url", "http://h:8080", "--secrets", str(secrets)]) == 2
    assert "fernet_key, jwt_secret, secret_key" in capsys.readouterr().err


def test_worker_refuses_an_api_url_without_a_scheme(
    capsys: pytest.CaptureFixture[str], var_dir: Path
) -> None:
    err = refused(capsys, "worker", "--api-url", "airflow-host:8080")
    assert "argument --api-url: 'airflow-host:8080' is not an http(s) URL" in err


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["simulator", "--port", "70000"], "--port"),
        (["simulator", "--fault-rate", "1.5"], "--fault-rate"),
        (["simulator", "--faults", "timeout,gremlins"], "--faults"),
        (["simulator", "--speed", "0"], "--speed"),
        (["simulator", "--balance", "USDT"], "--balance"),
        (["simulator", "--balance", "USDT=-5"], "--balance"),
        (["simulator", "--api-key", "nocolon"], "--api-key"),
        (["run", "--history-days", "0"], "--history-days"),
        (["run", "--algorithms", "dqn,ppo"], "--algorithms"),
        (["arbitrage", "study", "--days", "0"], "--days"),
        (["arbitrage", "study", "--threshold-bps", "-1"], "--threshold-bps"),
        (["models", "promote", "0"], "version"),
        (["simulator", "--kraken-counter", "15"], "--kraken-counter"),
    ],
)
def test_every_command_checks_its_flags_where_they_are_parsed(
    capsys: pytest.CaptureFixture[str], var_dir: Path, argv: list[str], flag: str
) -> None:
    assert f"argument {flag}: " in refused(capsys, *argv)


def test_the_argument_types_return_plain_values() -> None:
    assert arguments.positive_int("3") == 3
    assert arguments.iso_time("1970-01-02") == 86_400_000
    assert arguments.market("binance:btc/usdt:1h") == Market.model_validate("binance:BTC/USDT:1h")
    assert arguments.int_list("0, 1,2") == [0, 1, 2]
    assert arguments.choice_list(("dqn", "a2c"))("A2C,dqn") == ("a2c", "dqn")
    assert arguments.finite_float("-1000") == -1000.0
    assert arguments.port("0") == 0
    assert arguments.balance("usdt=10") == ("USDT", 10.0)
    assert arguments.plant("ETHBTC:40:600") == ("ETHBTC", 40.0, 600.0)
    assert arguments.counter("15:0.33") == (15.0, 0.33)
    with pytest.raises(argparse.ArgumentTypeError, match="finite"):
        arguments.finite_float(str(math.nan))
