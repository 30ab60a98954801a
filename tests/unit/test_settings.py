"""Settings: one typed, frozen object; bad values fail at load, naming key and fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.errors import ConfigurationError
from pipeline.settings import Market, load_settings, timeframe_ms


def test_defaults_are_embedded_sqlite_paper_trading_and_the_simulator() -> None:
    settings = load_settings()
    assert settings.db_url.startswith("sqlite:///")
    assert settings.db_url.endswith("/var/cryptobots.db")
    assert settings.artifact_root == str(settings.var_dir / "artifacts")
    assert settings.trading_mode == "paper"
    assert settings.exchanges["binance"].url == "http://127.0.0.1:8900"
    assert [str(m) for m in settings.markets] == [
        "binance:BTC/USDT:1h",
        "binance:ETH/USDT:1h",
        "binance:ETH/BTC:1h",
    ]


@pytest.mark.parametrize(
    "url",
    ["postgresql://u:p@db.example:5432/cb", "postgres://u:p@db.example:5432/cb"],
)
def test_plain_postgres_url_is_mapped_to_the_psycopg2_driver(url: str) -> None:
    settings = load_settings(db_url=url)
    assert settings.db_url == "postgresql+psycopg2://u:p@db.example:5432/cb"


def test_explicit_driver_in_url_is_kept() -> None:
    url = "postgresql+psycopg2://u@h/cb"
    assert load_settings(db_url=url).db_url == url


def test_env_vars_with_double_underscore_set_nested_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRYPTOBOTS_EXCHANGES__BINANCE__URL", "http://127.0.0.1:9999/")
    monkeypatch.setenv("CRYPTOBOTS_EXCHANGES__KRAKEN__CREDENTIALS", "env:KRAKEN")
    monkeypatch.setenv("CRYPTOBOTS_MARKETS", "binance:BTC/USDT:1m, kraken:btc/usdc:1m")
    settings = load_settings()
    assert settings.exchanges["binance"].url == "http://127.0.0.1:9999"
    assert settings.exchanges["kraken"].ccxt_id == "kraken"
    assert settings.exchanges["kraken"].credentials == "env:KRAKEN"
    assert [str(m) for m in settings.markets] == ["binance:BTC/USDT:1m", "kraken:BTC/USDC:1m"]


def test_markets_accept_a_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRYPTOBOTS_MARKETS", '["binance:ETH/BTC:4h"]')
    assert [m.timeframe_ms for m in load_settings().markets] == [4 * 3600 * 1000]


def test_yaml_file_is_read_and_env_overrides_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "cryptobots.yaml"
    config.write_text(
        "trading_mode: live\n"
        "artifact_root: s3://models/cryptobots\n"
        "exchanges:\n  binance:\n    url: http://sim:8900\n"
        "markets: ['binance:BTC/USDT:1h']\n"
    )
    monkeypatch.setenv("CRYPTOBOTS_CONFIG", str(config))
    monkeypatch.setenv("CRYPTOBOTS_TRADING_MODE", "paper")
    settings = load_settings()
    assert settings.trading_mode == "paper"
    assert settings.artifact_root == "s3://models/cryptobots"
    assert settings.exchanges["binance"].url == "http://sim:8900"


def test_unknown_yaml_key_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "cryptobots.yaml"
    config.write_text("trading_mod: live\n")
    monkeypatch.setenv("CRYPTOBOTS_CONFIG", str(config))
    with pytest.raises(ConfigurationError, match=r"trading_mod='live' in .*cryptobots\.yaml"):
        load_settings()


def test_a_bad_yaml_value_is_named_by_its_yaml_key_not_an_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "cryptobots.yaml"
    config.write_text("training:\n  algorithms: [dqn, ppo]\n")
    monkeypatch.setenv("CRYPTOBOTS_CONFIG", str(config))
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert f"training.algorithms[1]='ppo' in {config}" in str(raised.value)
    assert "CRYPTOBOTS_" not in str(raised.value)


def test_a_bad_environment_value_is_named_by_its_variable_even_with_a_yaml_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "cryptobots.yaml"
    config.write_text("training:\n  seed: 3\n")
    monkeypatch.setenv("CRYPTOBOTS_CONFIG", str(config))
    monkeypatch.setenv("CRYPTOBOTS_TRAINING__DECISION_EVERY", "0")
    with pytest.raises(ConfigurationError, match=r"CRYPTOBOTS_TRAINING__DECISION_EVERY='0'"):
        load_settings()


def test_malformed_yaml_is_one_error_naming_the_file_line_and_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "cryptobots.yaml"
    config.write_text("training:\n  steps: [1\n")
    monkeypatch.setenv("CRYPTOBOTS_CONFIG", str(config))
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    message = str(raised.value)
    assert str(config) in message
    assert "not valid YAML at line 3, column 1" in message
    assert "\n" not in message


@pytest.mark.parametrize("text", ["- training\n- serving\n", "just words\n", "42\n"])
def test_a_yaml_file_that_is_not_a_mapping_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    config = tmp_path / "cryptobots.yaml"
    config.write_text(text)
    monkeypatch.setenv("CRYPTOBOTS_CONFIG", str(config))
    with pytest.raises(ConfigurationError, match="not a mapping of settings"):
        load_settings()


def test_an_empty_yaml_file_means_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "cryptobots.yaml"
    config.write_text("# nothing yet\n")
    monkeypatch.setenv("CRYPTOBOTS_CONFIG", str(config))
    assert load_settings().trading_mode == "paper"


def test_a_list_setting_may_be_comma_separated_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CRYPTOBOTS_TRAINING__ALGORITHMS", "dqn, a2c")
    monkeypatch.setenv("CRYPTOBOTS_TRAINING__VOLATILITY_FEATURES", "vol_168,vol_720")
    training = load_settings().training
    assert training.algorithms == ("dqn", "a2c")
    assert training.volatility_features == ("vol_168", "vol_720")


def test_broken_json_in_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CRYPTOBOTS_TRAINING__ALGORITHMS", '["dqn"')
    with pytest.raises(ConfigurationError, match="CRYPTOBOTS_TRAINING__ALGORITHMS: not valid JSON"):
        load_settings()


def test_missing_config_file_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRYPTOBOTS_CONFIG", "/nonexistent/cryptobots.yaml")
    with pytest.raises(ConfigurationError, match=r"/nonexistent/cryptobots\.yaml"):
        load_settings()


def test_unknown_env_setting_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRYPTOBOTS_DB_ULR", "sqlite:///x.db")
    with pytest.raises(ConfigurationError, match=r"CRYPTOBOTS_DB_ULR.*CRYPTOBOTS_DB_URL"):
        load_settings()


def test_invalid_value_names_the_key_the_value_and_what_is_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CRYPTOBOTS_TRADING_MODE", "yolo")
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    message = str(raised.value)
    assert "CRYPTOBOTS_TRADING_MODE='yolo'" in message
    assert "'paper' or 'live'" in message


def test_bad_market_text_shows_the_expected_format() -> None:
    with pytest.raises(ConfigurationError, match=r"exchange:BASE/QUOTE:timeframe"):
        load_settings(markets="binance-BTC/USDT-1h")


def test_bad_symbol_names_the_market_position_and_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRYPTOBOTS_MARKETS", "binance:BTC/USDT:1h,binance:BTCUSDT:1h")
    with pytest.raises(ConfigurationError, match=r"CRYPTOBOTS_MARKETS\[1\].symbol='BTCUSDT'"):
        load_settings()


def test_market_on_an_unconfigured_exchange_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"'kraken'.*not configured"):
        load_settings(markets="kraken:BTC/USD:1h")


def test_unsupported_database_is_refused_with_password_masked() -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_settings(db_url="mysql://trader:hunter2@db/cb")
    assert "CRYPTOBOTS_DB_URL" in str(raised.value)
    assert "hunter2" not in str(raised.value)
    assert "sqlite and postgresql" in str(raised.value)


def test_unparseable_database_url_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="CRYPTOBOTS_DB_URL='not a url'"):
        load_settings(db_url="not a url")


def test_credentials_are_references_never_keys() -> None:
    with pytest.raises(ConfigurationError, match="not a reference"):
        load_settings(exchanges={"binance": {"credentials": "AKIAxxxxSECRET"}})


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValidationError):
        settings.trading_mode = "live"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("timeframe", "ms"),
    [
        ("1s", 1000),
        ("1m", 60_000),
        ("5m", 300_000),
        ("1h", 3_600_000),
        ("1d", 86_400_000),
        ("1w", 604_800_000),
    ],
)
def test_timeframe_length_in_milliseconds(timeframe: str, ms: int) -> None:
    assert timeframe_ms(timeframe) == ms


@pytest.mark.parametrize("timeframe", ["0m", "1M", "h", "1.5h", "1y"])
def test_invalid_timeframe_is_refused(timeframe: str) -> None:
    with pytest.raises(ValueError, match="is not valid"):
        timeframe_ms(timeframe)


def test_market_round_trips_through_its_text() -> None:
    market = Market.model_validate("Binance:eth/btc:1h")
    assert str(market) == "binance:ETH/BTC:1h"
    assert Market.model_validate(str(market)) == market


def test_the_default_schedules_are_hourly_market_data_and_training_at_two_utc() -> None:
    settings = load_settings()
    assert (
        settings.airflow.market_data_schedule,
        settings.airflow.market_data_schedule_timezone,
    ) == (
        "0 * * * *",
        "UTC",
    )
    assert (settings.training.schedule, settings.training.schedule_timezone) == ("0 2 * * *", "UTC")


@pytest.mark.parametrize("cron", ["30 23 * * 1-5", "@weekly", " 0 6 * * * "])
def test_a_cron_expression_or_preset_in_a_time_zone_sets_the_training_schedule(
    monkeypatch: pytest.MonkeyPatch, cron: str
) -> None:
    monkeypatch.setenv("CRYPTOBOTS_TRAINING__SCHEDULE", cron)
    monkeypatch.setenv("CRYPTOBOTS_TRAINING__SCHEDULE_TIMEZONE", "America/New_York")
    training = load_settings().training
    assert (training.schedule, training.schedule_timezone) == (cron.strip(), "America/New_York")


@pytest.mark.parametrize(
    ("cron", "problem"),
    [("0 25 * * *", "out of range"), ("0 2 * *", "4 fields"), ("@fortnightly", "unknown preset")],
)
def test_an_invalid_cron_names_the_setting_and_a_valid_example(
    monkeypatch: pytest.MonkeyPatch, cron: str, problem: str
) -> None:
    monkeypatch.setenv("CRYPTOBOTS_TRAINING__SCHEDULE", cron)
    with pytest.raises(ConfigurationError) as error:
        load_settings()
    assert f"CRYPTOBOTS_TRAINING__SCHEDULE='{cron}'" in str(error.value)
    assert problem in str(error.value)
    assert "e.g. '0 2 * * *'" in str(error.value)


def test_an_unknown_time_zone_names_the_setting_and_examples(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CRYPTOBOTS_TRAINING__SCHEDULE_TIMEZONE", "EST5EDT/Nowhere")
    with pytest.raises(
        ConfigurationError, match=r"CRYPTOBOTS_TRAINING__SCHEDULE_TIMEZONE=.*America/New_York"
    ):
        load_settings()


@pytest.mark.parametrize(
    ("cron", "timezone"), [("30 * * * *", "UTC"), ("0 * * * *", "Asia/Kolkata")]
)
def test_a_market_data_schedule_off_the_whole_hour_is_refused(
    monkeypatch: pytest.MonkeyPatch, cron: str, timezone: str
) -> None:
    monkeypatch.setenv("CRYPTOBOTS_AIRFLOW__MARKET_DATA_SCHEDULE", cron)
    monkeypatch.setenv("CRYPTOBOTS_AIRFLOW__MARKET_DATA_SCHEDULE_TIMEZONE", timezone)
    with pytest.raises(ConfigurationError, match="not on a whole hour: the candles close"):
        load_settings()


def test_a_daily_market_data_schedule_in_new_york_is_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CRYPTOBOTS_AIRFLOW__MARKET_DATA_SCHEDULE", "0 6 * * *")
    monkeypatch.setenv("CRYPTOBOTS_AIRFLOW__MARKET_DATA_SCHEDULE_TIMEZONE", "America/New_York")
    assert load_settings().airflow.market_data_schedule == "0 6 * * *"
