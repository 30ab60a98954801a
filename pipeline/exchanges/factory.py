"""The ccxt client factory: per-exchange options and capabilities, and credentials.

`create_ccxt` builds a bare ccxt client from an exchange's settings (spot only, rate
limiter on, base URL overridden for the simulator or a testnet); `client.open_exchange`
wraps it for use. Per-exchange differences live in `CAPABILITIES`, `SPOT_OPTIONS` and
ccxt's market data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import ConfigurationError
from pipeline.settings import ExchangeConfig


@dataclass(frozen=True)
class Capability:
    """What differs between exchanges and is not in ccxt's market data."""

    weight_header: str | None = None  # response header with the weight used this minute
    rate_limit_type: str | None = None  # exchangeInfo rateLimits entry that budgets weight
    client_id_param: str = "clientOrderId"  # names an existing order by our client id
    new_client_id_param: str = "clientOrderId"  # gives a new order our client id
    lookup_by_listing: bool = False  # ccxt cannot fetch one order by client id: list them
    ohlcv_window: int | None = None  # candles the OHLCV endpoint reaches back, at most


CAPABILITIES: dict[str, Capability] = {
    "binance": Capability(
        weight_header="x-mbx-used-weight-1m",
        rate_limit_type="REQUEST_WEIGHT",
        client_id_param="origClientOrderId",
        new_client_id_param="newClientOrderId",
    ),
    # Kraken: a client id (cl_ord_id) is a UUID, 32 hex digits or up to 18 characters;
    # ccxt.kraken's fetch_order cannot take one (it sends it as userref), its open and
    # closed order listings can; OHLC answers the 720 most recent candles only
    "kraken": Capability(lookup_by_listing=True, ohlcv_window=720),
}
SPOT_OPTIONS = {
    "binance": {
        "defaultType": "spot",
        "fetchMarkets": {"types": ["spot"]},
        "fetchCurrencies": False,
        "fetchMargins": False,
        "quoteOrderQty": False,
    }
}


@dataclass(frozen=True)
class Credentials:
    """API keys; never printed (repr hides them)."""

    api_key: str = field(repr=False)
    secret: str = field(repr=False)


def credentials_from_reference(
    reference: str | None, environ: Mapping[str, str]
) -> Credentials | None:
    """Resolve `env:PREFIX` (PREFIX_API_KEY, PREFIX_SECRET) from `environ`; None when unset."""
    if reference is None:
        return None
    kind, _, target = reference.partition(":")
    if kind == "env":
        key, secret = environ.get(f"{target}_API_KEY"), environ.get(f"{target}_SECRET")
        if not key or not secret:
            raise ConfigurationError(
                f"credentials {reference}: set {target}_API_KEY and {target}_SECRET"
            )
        return Credentials(key, secret)
    if kind == "file":
        import yaml

        try:
            with open(target) as handle:
                data = yaml.safe_load(handle) or {}
            return Credentials(str(data["api_key"]), str(data["secret"]))
        except (OSError, KeyError, TypeError) as error:
            raise ConfigurationError(
                f"credentials {reference}: need a readable YAML file with api_key and secret "
                f"({type(error).__name__})"
            ) from None
    raise ConfigurationError(
        f"credentials {reference}: airflow: references are resolved by the Airflow hook"
    )


def create_ccxt(
    name: str,
    config: ExchangeConfig,
    credentials: Credentials | None = None,
    *,
    timeout_ms: int = 10_000,
) -> Any:
    """A ccxt client for exchange `name`: spot only, rate limiter on, URL overridden."""
    import ccxt

    ccxt_id = config.ccxt_id or name
    if not hasattr(ccxt, ccxt_id):
        raise ConfigurationError(
            f"exchange {name}: ccxt has no exchange {ccxt_id!r}; "
            f"set CRYPTOBOTS_EXCHANGES__{name.upper()}__CCXT_ID"
        )
    options: dict[str, Any] = {
        "enableRateLimit": True,
        "enableLastJsonResponse": True,
        "timeout": timeout_ms,
        "options": dict(SPOT_OPTIONS.get(ccxt_id, {"defaultType": "spot"})),
    }
    if config.rate_limit_ms is not None:
        options["rateLimit"] = config.rate_limit_ms
    if credentials is not None:
        options |= {"apiKey": credentials.api_key, "secret": credentials.secret}
    client = getattr(ccxt, ccxt_id)(options)
    if config.url:
        api = client.urls["api"]
        for key, value in list(api.items()):
            if isinstance(value, str):
                api[key] = _rebase(value, config.url)
    return client


def _rebase(url: str, base: str) -> str:
    """Keep the API path of `url` (e.g. /api/v3), replace scheme and host with `base`'s."""
    from urllib.parse import urlsplit

    return base + urlsplit(url).path
