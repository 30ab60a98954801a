"""The one Settings object of cryptobots, validated when it is loaded.

Sources, strongest first: keyword arguments, environment variables
(`CRYPTOBOTS_<KEY>`, nested keys joined by `__`, e.g.
`CRYPTOBOTS_EXCHANGES__BINANCE__URL`), the YAML file named by `CRYPTOBOTS_CONFIG`,
then the defaults. Unknown keys are refused, and an invalid value fails at load with a
message naming the key, the value and what is allowed. This package is the only place
that reads the environment; everything else takes a `Settings`.

This module is the package's face: `Settings`, `load_settings` and every name the rest of
the code imports from `pipeline.settings`. The sections live beside it, one group each:
`exchanges` (exchanges, markets, timeframes), `data` (candle validation), `airflow`,
`training`, `promotion`, `serving` (the trader and its risk limits), `arbitrage`; `paths`
and `urls` say where things are; `sources` reads the environment and the YAML file and
names a bad value as the user wrote it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from pipeline.errors import ConfigurationError
from pipeline.settings.airflow import AirflowSettings
from pipeline.settings.arbitrage import ArbitrageSettings, Withdrawal
from pipeline.settings.data import ValidationSettings
from pipeline.settings.exchanges import (
    EXCHANGE_NAME,
    TIMEFRAME_UNITS_S,
    ExchangeConfig,
    Market,
    default_exchanges,
    default_markets,
    timeframe_ms,
)
from pipeline.settings.paths import PROJECT_ROOT, default_data_dir, default_var_dir
from pipeline.settings.promotion import PromotionSettings
from pipeline.settings.serving import RiskSettings, ServingSettings
from pipeline.settings.sources import CommaListEnvSource, describe, read_yaml
from pipeline.settings.training import TRAINING_FEATURES, TrainingSettings
from pipeline.settings.urls import check_db_url, mask_url, normalize_db_url

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "NON_SETTING_ENV",
    "PROJECT_ROOT",
    "TIMEFRAME_UNITS_S",
    "TRAINING_FEATURES",
    "AirflowSettings",
    "ArbitrageSettings",
    "ExchangeConfig",
    "Market",
    "PromotionSettings",
    "RiskSettings",
    "ServingSettings",
    "Settings",
    "TrainingSettings",
    "ValidationSettings",
    "Withdrawal",
    "default_data_dir",
    "default_var_dir",
    "load_settings",
    "mask_url",
    "normalize_db_url",
    "timeframe_ms",
]

ENV_PREFIX = "CRYPTOBOTS_"
CONFIG_ENV = "CRYPTOBOTS_CONFIG"
# Variables that share the prefix without being settings.
NON_SETTING_ENV = (CONFIG_ENV, "CRYPTOBOTS_TEST_")


class Settings(BaseSettings):
    """Everything configurable about cryptobots, typed and frozen."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    var_dir: Path = Field(
        default_factory=default_var_dir,
        description="where the embedded defaults write (database, artifacts, logs)",
    )
    db_url: str = Field(default="", description="SQLAlchemy URL; empty = SQLite file under var_dir")
    artifact_root: str = Field(
        default="", description="model artifact root: a folder or any fsspec URL (s3://...)"
    )
    mlflow_tracking_uri: str = Field(
        default="",
        description="MLflow tracking server that resolves models:/ and runs:/ sources of "
        "`models register` (MLflow installed); empty = MLflow's own default",
    )
    data_dir: Path | None = Field(
        default_factory=default_data_dir,
        description="recorded market data served by the exchange simulator",
    )
    exchanges: dict[str, ExchangeConfig] = Field(default_factory=default_exchanges)
    markets: Annotated[tuple[Market, ...], NoDecode] = Field(default_factory=default_markets)
    trading_mode: Literal["paper", "live"] = Field(
        default="paper", description="paper unless told otherwise; live also needs keys"
    )
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    airflow: AirflowSettings = Field(default_factory=AirflowSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    promotion: PromotionSettings = Field(default_factory=PromotionSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    arbitrage: ArbitrageSettings = Field(default_factory=ArbitrageSettings)
    require_gpu: bool = Field(
        default=False, description="fail (doctor, training) instead of falling back to CPU"
    )

    @field_validator("var_dir")
    @classmethod
    def _absolute_var_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("data_dir")
    @classmethod
    def _data_dir(cls, value: Path | None) -> Path | None:
        if value is None or str(value) == "":
            return None
        return value.expanduser().resolve()

    @field_validator("exchanges", mode="before")
    @classmethod
    def _exchange_names(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            for name in value:
                if not EXCHANGE_NAME.match(str(name)):
                    raise ValueError(
                        f"exchange name {name!r} is not valid: use lowercase letters, digits, _"
                    )
        return value

    @field_validator("markets", mode="before")
    @classmethod
    def _markets_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part for part in (p.strip() for p in text.split(",")) if part]
        return value

    @field_validator("db_url")
    @classmethod
    def _db_url(cls, value: str, info: ValidationInfo) -> str:
        var_dir = info.data.get("var_dir", default_var_dir())
        url = normalize_db_url(value.strip() or f"sqlite:///{var_dir / 'cryptobots.db'}")
        check_db_url(url)
        return url

    @field_validator("artifact_root")
    @classmethod
    def _artifact_root(cls, value: str, info: ValidationInfo) -> str:
        return value.strip() or str(info.data.get("var_dir", default_var_dir()) / "artifacts")

    @model_validator(mode="after")
    def _resolve_exchanges(self) -> Settings:
        exchanges = {
            name: cfg if cfg.ccxt_id else cfg.model_copy(update={"ccxt_id": name})
            for name, cfg in self.exchanges.items()
        }
        object.__setattr__(self, "exchanges", exchanges)
        unknown = sorted({m.exchange for m in self.markets} - set(exchanges))
        if unknown:
            raise ValueError(
                f"{ENV_PREFIX}MARKETS uses exchange(s) {unknown} that are not configured: "
                f"add them under exchanges (e.g. {ENV_PREFIX}EXCHANGES__{unknown[0].upper()}"
                f"__CCXT_ID=...) or fix the market; configured: {sorted(exchanges)}"
            )
        return self

    @property
    def masked_db_url(self) -> str:
        """The database URL with its password hidden."""
        return mask_url(self.db_url)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            CommaListEnvSource(settings_cls),
        ]
        path = _config_file(os.environ)
        if path is not None:
            sources.append(InitSettingsSource(settings_cls, read_yaml(path, CONFIG_ENV)))
        return tuple(sources)


def _config_file(environ: Mapping[str, str]) -> Path | None:
    config_file = environ.get(CONFIG_ENV)
    return Path(config_file).expanduser() if config_file else None


def _reject_unknown_env(environ: Mapping[str, str]) -> None:
    fields = {name.upper() for name in Settings.model_fields}
    unknown = sorted(
        key
        for key in environ
        if key.startswith(ENV_PREFIX)
        and not key.startswith(NON_SETTING_ENV)
        and key[len(ENV_PREFIX) :].split("__")[0].upper() not in fields
    )
    if unknown:
        raise ConfigurationError(
            f"unknown setting(s) {', '.join(unknown)}: known settings are "
            f"{', '.join(ENV_PREFIX + f for f in sorted(fields))} (nested keys join with __)"
        )


def load_settings(**overrides: Any) -> Settings:
    """Load and validate the settings; raise ConfigurationError naming each bad key."""
    _reject_unknown_env(os.environ)
    try:
        return Settings(**overrides)
    except ValidationError as error:
        path = _config_file(os.environ)
        data = read_yaml(path, CONFIG_ENV) if path is not None else None
        lines = [
            describe(e, prefix=ENV_PREFIX, environ=os.environ, yaml_file=path, yaml_data=data)
            for e in error.errors()
        ]
        raise ConfigurationError("; ".join(lines)) from None
    except SettingsError as error:
        field = str(error).split('"')[1] if str(error).count('"') >= 2 else ""
        named = sorted(
            k for k in os.environ if k.upper().startswith(f"{ENV_PREFIX}{field.upper()}")
        )
        raise ConfigurationError(
            f"invalid setting {', '.join(named) or field}: not valid JSON; write a list as "
            '["a", "b"] or a,b and a mapping as {"key": "value"}'
        ) from None
