"""ccxt clients and the one adapter that translates ccxt's errors.

`open_exchange` builds a ccxt client from Settings (spot only, rate limiter on,
base URL overridden for the simulator or a testnet) and wraps it in an
`ExchangeClient` that:
- translates every ccxt exception into the cryptobots tree, in `translated`;
- retries temporary errors (network, timeouts, 429/418, 5xx, malformed bodies)
  with exponential backoff and jitter, honouring Retry-After, bounded;
- on the first contact, gives up within `FIRST_CONTACT_SECONDS` when nothing answers at
  the exchange's URL at all (`ExchangeUnreachable`, naming the URL and the fix);
- learns the request-weight budget the exchange states (exchangeInfo's
  rateLimits) and the weight of each kind of request (the used-weight header),
  and keeps each minute within it, with ccxt's own throttle still on underneath.
Per-exchange differences live in `CAPABILITIES` and ccxt's market data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from pipeline.errors import (
    ConfigurationError,
    CryptobotsError,
    ExchangeRejected,
    OrderNotFound,
    TemporaryExchangeError,
)
from pipeline.settings import ExchangeConfig, Settings

T = TypeVar("T")

FIRST_CONTACT_SECONDS = 3.0  # then an exchange that nothing answers for is reported


class ExchangeUnreachable(TemporaryExchangeError):
    """Nothing answers at the exchange's URL: connection refused, no such host, or no
    connection within the timeout (a temporary error: retried like any other once the
    exchange has answered)."""


@dataclass(frozen=True)
class Capability:
    """What differs between exchanges and is not in ccxt's market data."""

    weight_header: str | None = None  # response header with the weight used this minute
    rate_limit_type: str | None = None  # exchangeInfo rateLimits entry that budgets weight
    client_id_param: str = "clientOrderId"  # names an existing order by our client id


CAPABILITIES: dict[str, Capability] = {
    "binance": Capability(
        weight_header="x-mbx-used-weight-1m",
        rate_limit_type="REQUEST_WEIGHT",
        client_id_param="origClientOrderId",
    ),
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


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter for temporary exchange errors."""

    attempts: int = 8
    initial_seconds: float = 0.5
    max_seconds: float = 30.0
    total_seconds: float = 300.0


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


def open_exchange(
    settings: Settings,
    name: str,
    credentials: Credentials | None = None,
    *,
    retry: RetryPolicy | None = None,
    timeout_ms: int = 10_000,
    patience: float = FIRST_CONTACT_SECONDS,
) -> ExchangeClient:
    """The configured exchange `name`, ready to use (markets loaded, pace learned).

    ExchangeUnreachable after `patience` seconds when nothing answers at its URL; other
    temporary errors are retried as `retry` says."""
    config = settings.exchanges.get(name)
    if config is None:
        raise ConfigurationError(
            f"exchange {name!r} is not configured; configured: {sorted(settings.exchanges)}"
        )
    client = create_ccxt(name, config, credentials, timeout_ms=timeout_ms)
    exchange = ExchangeClient(name, client, retry or RetryPolicy())
    exchange.load_markets(patience=patience)
    return exchange


class WeightPacer:
    """Keeps requests inside the weight budget an exchange states per minute.

    The weight of each kind of request is learned from the used-weight header (its
    rise across the request), so the pacer follows what the exchange charges, not
    what a client library assumes. Before a request, if the minute's used weight
    plus this request (and one more, for other clients of the same key) would pass
    the budget, it waits for the next minute; otherwise the request goes at once,
    under ccxt's own throttle. A 429 that still happens (clock skew, other clients)
    is retried after its Retry-After, never sooner, so the exchange never bans us.
    """

    def __init__(
        self,
        header: str | None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.header = header
        self.clock = clock
        self.sleep = sleep
        self.budget: int | None = None
        self.weights: dict[str, int] = {}
        self.used = 0
        self.window = -1
        self.waited = 0.0

    def before(self, kind: str) -> None:
        """Sleep until a request of `kind` fits the minute's budget."""
        if not self.budget:
            return
        now = self.clock()
        weight = self.weights.get(kind, 1)
        if int(now // 60) == self.window and self.used + 2 * weight > self.budget:
            pause = 60 - now % 60 + 0.05
            self.waited += pause
            self.sleep(pause)

    def after(self, kind: str, headers: Mapping[str, str] | None) -> None:
        """Learn the used weight and this kind's weight from the response headers."""
        used = _header_int(headers, self.header)
        if used is None:
            return
        window = int(self.clock() // 60)
        if window == self.window and used > self.used:
            self.weights[kind] = used - self.used
        elif window != self.window or used < self.used:
            self.weights.setdefault(kind, used)
        self.window, self.used = window, used


def _header_int(headers: Mapping[str, str] | None, name: str | None) -> int | None:
    if not headers or not name:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        return int(lowered[name])
    except (KeyError, ValueError):
        return None


class ExchangeClient:
    """A ccxt client behind the cryptobots error tree, with retries and pacing."""

    def __init__(self, name: str, client: Any, retry: RetryPolicy) -> None:
        self.name = name
        self.client = client
        self.retry = retry
        self.capability = CAPABILITIES.get(client.id, Capability())
        self.pacer = WeightPacer(self.capability.weight_header)
        self.retries = 0

    @property
    def budget(self) -> int | None:
        """The request weight per minute the exchange stated (None: not stated)."""
        return self.pacer.budget

    def load_markets(self, patience: float | None = None) -> dict[str, Any]:
        """(Re)load the markets; a malformed answer is a temporary error, not "no markets".
        `patience`: see `call`."""

        def load() -> dict[str, Any]:
            markets = self.client.load_markets(reload=True)
            if self.client.last_json_response is None or not markets:
                raise TemporaryExchangeError(f"{self.name}: malformed or empty market list")
            return markets

        markets = self.call("load markets", load, kind="exchangeInfo", patience=patience)
        self._learn_budget(self.client.last_json_response)
        return markets

    def market(self, symbol: str) -> dict[str, Any]:
        """ccxt's market data for `symbol`; ExchangeRejected when the exchange lacks it."""
        market = self.client.markets.get(symbol)
        if market is None:
            raise ExchangeRejected(
                f"{self.name}:{symbol}: the exchange does not list this symbol; "
                f"check the market in CRYPTOBOTS_MARKETS"
            )
        return market

    def ohlcv_page_limit(self) -> int:
        """Candles per fetch_ohlcv request, from ccxt's own feature table."""
        features = getattr(self.client, "features", None) or {}
        spot = features.get("spot") or {}
        return int((spot.get("fetchOHLCV") or {}).get("limit") or 500)

    def fetch_ohlcv(self, symbol: str, timeframe: str, since: int, limit: int) -> list[list]:
        """One page of candles [ts, o, h, l, c, v]; a malformed page is a temporary error."""

        def fetch() -> list[list]:
            rows = self.client.fetch_ohlcv(symbol, timeframe, since=since, limit=limit)
            if self.client.last_json_response is None or not _well_formed(rows):
                raise TemporaryExchangeError(
                    f"{self.name}:{symbol}:{timeframe}: malformed klines page at since={since}"
                )
            return rows

        return self.call(f"{symbol}:{timeframe} candles since {since}", fetch, kind="klines")

    def server_time(self) -> int:
        """The exchange's clock in ms (candles close on it, not on ours)."""

        def fetch() -> int:
            value = self.client.fetch_time()
            if not isinstance(value, int | float):
                raise TemporaryExchangeError(f"{self.name}: server time answer {value!r}")
            return int(value)

        return self.call("server time", fetch, kind="time")

    def call(
        self,
        what: str,
        function: Callable[[], T],
        kind: str = "other",
        retry: bool = True,
        patience: float | None = None,
    ) -> T:
        """Run `function` with errors translated, temporary ones retried, pace kept.

        `retry=False` for requests that must not be repeated blindly (placing an order):
        the caller finds out what happened before trying again. `patience`: seconds after
        which an unreachable exchange is given up on (None: retried like any error)."""
        retrying = Retrying(
            retry=retry_if_exception_type(TemporaryExchangeError),
            wait=self._wait,
            stop=stop_after_attempt(self.retry.attempts if retry else 1)
            | stop_after_delay(self.retry.total_seconds)
            | _unreachable_for(patience),
            before_sleep=self._count_retry,
            reraise=True,
        )
        for attempt in retrying:
            with attempt, translated(f"{self.name}: {what}", self.client, self.name):
                self.pacer.before(kind)
                try:
                    result = function()
                finally:
                    self.pacer.after(kind, self.client.last_response_headers)
        return result  # type: ignore[possibly-undefined]

    def _wait(self, state: RetryCallState) -> float:
        backoff = wait_exponential_jitter(
            multiplier=self.retry.initial_seconds,
            max=self.retry.max_seconds,
            jitter=self.retry.initial_seconds,
        )(state)
        error = state.outcome.exception() if state.outcome else None
        return max(backoff, float(getattr(error, "retry_after", 0) or 0))

    def _count_retry(self, state: RetryCallState) -> None:
        self.retries += 1

    def _learn_budget(self, exchange_info: Any) -> None:
        cap = self.capability
        if not cap.rate_limit_type or not isinstance(exchange_info, dict):
            return
        for limit in exchange_info.get("rateLimits", []):
            if limit.get("rateLimitType") == cap.rate_limit_type:
                seconds = {"SECOND": 1, "MINUTE": 60, "HOUR": 3600, "DAY": 86400}.get(
                    limit.get("interval", ""), 60
                ) * int(limit.get("intervalNum", 1))
                self.set_budget(int(int(limit["limit"]) * 60 / seconds))

    def by_client_id(self, client_id: str) -> dict[str, str]:
        """ccxt params that name an existing order by our client order id."""
        return {self.capability.client_id_param: client_id}

    def set_budget(self, weight_per_minute: int | None) -> None:
        """Keep within `weight_per_minute` (None: leave pacing to ccxt's throttle alone)."""
        self.pacer.budget = weight_per_minute


def _unreachable_for(patience: float | None) -> Callable[[RetryCallState], bool]:
    """A tenacity stop: the exchange was unreachable and `patience` seconds have passed."""

    def stop(state: RetryCallState) -> bool:
        error = state.outcome.exception() if state.outcome else None
        return (
            patience is not None
            and isinstance(error, ExchangeUnreachable)
            and (state.seconds_since_start or 0.0) >= patience
        )

    return stop


def _well_formed(rows: Any) -> bool:
    return isinstance(rows, list) and all(
        isinstance(row, list) and len(row) >= 6 and isinstance(row[0], int) for row in rows
    )


@contextmanager
def translated(what: str, client: Any = None, name: str | None = None) -> Iterator[None]:
    """Translate ccxt exceptions raised inside into the cryptobots tree (the one place);
    `name` is the exchange's name in settings, for the fix an unreachable one needs."""
    import ccxt

    try:
        yield
    except CryptobotsError:
        raise
    except ccxt.NetworkError as error:
        why = _unreachable(error)
        if why is None:
            raise TemporaryExchangeError(
                f"{what}: {type(error).__name__}: {_short(error)}",
                retry_after=_retry_after(client),
            ) from error
        setting = f"CRYPTOBOTS_EXCHANGES__{(name or 'NAME').upper()}__URL"
        raise ExchangeUnreachable(
            f"{what}: nothing answers at {_base_url(client)} ({why}): start the exchange "
            f"simulator (python -m pipeline simulator) or set {setting} to the exchange's "
            "API address"
        ) from error
    except ccxt.AuthenticationError as error:
        raise ExchangeRejected(
            f"{what}: the exchange refused the API keys ({type(error).__name__}); "
            "check the credentials reference in settings"
        ) from error
    except ccxt.BadSymbol as error:
        raise ExchangeRejected(f"{what}: the exchange does not know this symbol") from error
    except ccxt.OrderNotFound as error:
        raise OrderNotFound(f"{what}: the exchange has no such order") from error
    except (ccxt.OperationFailed, ccxt.BadResponse, ccxt.NullResponse) as error:
        retry_after = _retry_after(client)
        raise TemporaryExchangeError(
            f"{what}: {type(error).__name__}: {_short(error)}", retry_after=retry_after
        ) from error
    except ccxt.BaseError as error:
        raise ExchangeRejected(f"{what}: {type(error).__name__}: {_short(error)}") from error


def _unreachable(error: BaseException) -> str | None:
    """Why no connection to the exchange could be opened at all (None: it answered, or
    the connection broke later, which a retry may fix)."""
    import socket

    from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

    chain: list[BaseException] = []
    seen: BaseException | None = error
    while seen is not None and len(chain) < 20:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    reasons = (
        ((ConnectionRefusedError,), "connection refused"),
        ((NameResolutionError, socket.gaierror), "no such host"),
        ((NewConnectionError,), "no connection"),
        ((ConnectTimeoutError,), "no connection within the timeout"),
    )
    for kinds, why in reasons:
        if any(isinstance(e, kinds) for e in chain):
            return why
    return None


def _base_url(client: Any) -> str:
    """scheme://host[:port] of the client's API (the URL settings override)."""
    from urllib.parse import urlsplit

    api = getattr(client, "urls", {}).get("api") if client is not None else None
    urls = api.values() if isinstance(api, dict) else [api]
    for url in urls:
        if isinstance(url, str):
            parts = urlsplit(url)
            return f"{parts.scheme}://{parts.netloc}"
    return "its URL"


def _retry_after(client: Any) -> float:
    headers = {k.lower(): v for k, v in ((client and client.last_response_headers) or {}).items()}
    try:
        return float(headers.get("retry-after", 0))
    except ValueError:
        return 0.0


def _short(error: Exception) -> str:
    return str(error).splitlines()[0][:300] if str(error) else ""
