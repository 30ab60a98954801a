"""Exchanges and markets: how to reach a venue, what one traded market is, candle lengths."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TIMEFRAME_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TIMEFRAME = re.compile(r"^([1-9][0-9]*)([smhdw])$")
# Shared with the sections that name symbols or exchanges on their own.
SYMBOL = re.compile(r"^[A-Z0-9]+/[A-Z0-9]+$")
EXCHANGE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_CREDENTIALS = re.compile(r"^(env|file|airflow):\S+$")


def timeframe_ms(timeframe: str) -> int:
    """Length of one candle of `timeframe` ('1m', '1h', '1d', ...) in milliseconds."""
    match = _TIMEFRAME.match(timeframe)
    if match is None:
        raise ValueError(
            f"timeframe {timeframe!r} is not valid: write a count and a unit "
            f"({'/'.join(TIMEFRAME_UNITS_S)}), e.g. '1m', '5m', '1h', '1d'"
        )
    return int(match.group(1)) * TIMEFRAME_UNITS_S[match.group(2)] * 1000


class Market(BaseModel):
    """One traded market, written `exchange:BASE/QUOTE:timeframe`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    exchange: str
    symbol: str
    timeframe: str

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        parts = value.strip().split(":")
        if len(parts) != 3:
            raise ValueError(
                f"market {value!r} is not valid: write exchange:BASE/QUOTE:timeframe, "
                "e.g. binance:BTC/USDT:1h"
            )
        exchange, symbol, timeframe = parts
        return {"exchange": exchange, "symbol": symbol, "timeframe": timeframe}

    @field_validator("exchange")
    @classmethod
    def _exchange_name(cls, value: str) -> str:
        value = value.strip().lower()
        if not EXCHANGE_NAME.match(value):
            raise ValueError(
                f"exchange name {value!r} is not valid: use lowercase letters, "
                "digits and _, e.g. binance"
            )
        return value

    @field_validator("symbol")
    @classmethod
    def _symbol(cls, value: str) -> str:
        value = value.strip().upper()
        if not SYMBOL.match(value):
            raise ValueError(f"symbol {value!r} is not valid: write BASE/QUOTE, e.g. BTC/USDT")
        return value

    @field_validator("timeframe")
    @classmethod
    def _timeframe(cls, value: str) -> str:
        timeframe_ms(value)
        return value

    @property
    def timeframe_ms(self) -> int:
        """Candle length in milliseconds."""
        return timeframe_ms(self.timeframe)

    def __str__(self) -> str:
        return f"{self.exchange}:{self.symbol}:{self.timeframe}"


class ExchangeConfig(BaseModel):
    """How to reach one exchange through ccxt; secrets are referenced, never stored."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ccxt_id: str | None = Field(
        default=None, description="ccxt exchange class id; defaults to the exchange's name"
    )
    url: str | None = Field(
        default=None,
        description="API base URL replacing ccxt's (the simulator, a testnet); None = the real one",
    )
    rate_limit_ms: float | None = Field(
        default=None,
        gt=0,
        description="ccxt's pause between requests of cost 1, in ms (None: ccxt's own for the "
        "exchange, e.g. 1000 for Kraken; lower only for a simulator or a higher tier)",
    )
    credentials: str | None = Field(
        default=None,
        description="where the API keys are: env:<PREFIX> (reads <PREFIX>_API_KEY and "
        "<PREFIX>_SECRET), file:<path>, or airflow:<connection id>",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"URL {value!r} is not valid: write http(s)://host[:port][/path]")
        return value.rstrip("/")

    @field_validator("credentials")
    @classmethod
    def _credentials(cls, value: str | None) -> str | None:
        if value is not None and not _CREDENTIALS.match(value):
            raise ValueError(
                f"credentials {value!r} are not a reference: write env:<PREFIX>, file:<path> "
                "or airflow:<connection id> (keys themselves never go in settings)"
            )
        return value


def default_exchanges() -> dict[str, ExchangeConfig]:
    """The offline default: the exchange simulator on loopback, speaking Binance's API."""
    return {"binance": ExchangeConfig(ccxt_id="binance", url="http://127.0.0.1:8900")}


def default_markets() -> tuple[Market, ...]:
    """The markets traded by default: the simulator's Binance triangle, hourly."""
    return tuple(
        Market.model_validate(text)
        for text in ("binance:BTC/USDT:1h", "binance:ETH/USDT:1h", "binance:ETH/BTC:1h")
    )
