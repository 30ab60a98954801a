"""The exchange client: a ccxt client behind the cryptobots error tree, with retries and pacing.

`open_exchange` builds one from Settings (the ccxt client from `factory`) as an
`ExchangeClient` that:
- translates every ccxt exception into the cryptobots tree (`translation.translated`);
- retries temporary errors (network, timeouts, 429/418, 5xx, malformed bodies)
  with exponential backoff and jitter, honouring Retry-After, bounded;
- on the first contact, gives up within `FIRST_CONTACT_SECONDS` when nothing answers at
  the exchange's URL at all (`ExchangeUnreachable`, naming the URL and the fix);
- learns the request-weight budget the exchange states (exchangeInfo's rateLimits) and
  keeps each minute within it (`pacing.WeightPacer`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
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
    ExchangeRejected,
    HistoryOutOfReach,
    OrderNotFound,
    TemporaryExchangeError,
)
from pipeline.exchanges.factory import CAPABILITIES, Capability, Credentials, create_ccxt
from pipeline.exchanges.pacing import WeightPacer
from pipeline.exchanges.translation import ExchangeUnreachable, translated
from pipeline.settings import Settings, timeframe_ms
from pipeline.timeutil import iso

T = TypeVar("T")

FIRST_CONTACT_SECONDS = 3.0  # then an exchange that nothing answers for is reported


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter for temporary exchange errors."""

    attempts: int = 8
    initial_seconds: float = 0.5
    max_seconds: float = 30.0
    total_seconds: float = 300.0


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


class ExchangeClient:
    """A ccxt client behind the cryptobots error tree, with retries and pacing."""

    def __init__(self, name: str, client: Any, retry: RetryPolicy) -> None:
        self.name = name
        self.client = client
        self.retry = retry
        self.capability = CAPABILITIES.get(client.id, Capability())
        self.pacer = WeightPacer(self.capability.weight_header)
        self.retries = 0
        self.requests: Counter[str] = Counter()  # requests sent, by kind (retries included)

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

        rows = self.call(f"{symbol}:{timeframe} candles since {since}", fetch, kind="klines")
        self._check_reach(symbol, timeframe, since, rows)
        return rows

    def _check_reach(self, symbol: str, timeframe: str, since: int, rows: list[list]) -> None:
        """HistoryOutOfReach when the exchange answers only its most recent candles
        (`Capability.ohlcv_window`) and `since` lies before them: the page holds later
        candles than asked, and taking it would store a short history as complete."""
        window = self.capability.ohlcv_window
        if window is None or not rows:
            return
        tf = timeframe_ms(timeframe)
        oldest = int(rows[-1][0]) - (window - 1) * tf
        if since >= oldest - tf:
            return
        raise HistoryOutOfReach(
            f"{self.name}:{symbol}:{timeframe}: {self.name}'s candle endpoint answers only "
            f"its {window} most recent candles (from {iso(oldest)}); candles from "
            f"{iso(since)} are out of its reach, and nothing was stored. Backfill from "
            f"{iso(oldest)} or later, or take the older history from another venue"
        )

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
                self.requests[kind] += 1
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

    def new_order_params(self, client_id: str) -> dict[str, str]:
        """ccxt params that give a new order our client order id."""
        return {self.capability.new_client_id_param: client_id}

    def find_order(
        self, symbol: str, client_id: str, extra: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """The order with our client id, as ccxt parses it; None when the exchange has
        none. One lookup where ccxt can fetch by client id, else the open orders, then
        the closed ones, filtered by it (Kraken)."""
        params = self.by_client_id(client_id) | (extra or {})
        if not self.capability.lookup_by_listing:
            try:
                return self.call(
                    f"{symbol} order {client_id}",
                    lambda: self.client.fetch_order(None, symbol, params),
                    kind="order_status",
                )
            except OrderNotFound:
                return None
        for listing in (self.client.fetch_open_orders, self.client.fetch_closed_orders):
            orders = self.call(
                f"{symbol} orders {client_id}",
                lambda listing=listing: listing(symbol, None, None, params),
                kind="order_status",
            )
            found = [o for o in orders if o.get("clientOrderId") == client_id]
            if found:
                return found[-1]
        return None

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
