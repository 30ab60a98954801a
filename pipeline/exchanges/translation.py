"""The one place that translates ccxt's exceptions into the cryptobots error tree.

Temporary failures (network, timeouts, 429/418, 5xx, malformed bodies) become
`TemporaryExchangeError` carrying the Retry-After the exchange asked for; an exchange
that nothing answers for at all becomes `ExchangeUnreachable`, naming the URL and the fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pipeline.errors import (
    CryptobotsError,
    ExchangeRejected,
    OrderNotFound,
    TemporaryExchangeError,
)


class ExchangeUnreachable(TemporaryExchangeError):
    """Nothing answers at the exchange's URL: connection refused, no such host, or no
    connection within the timeout (a temporary error: retried like any other once the
    exchange has answered)."""


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
    except ccxt.PermissionDenied as error:
        raise ExchangeRejected(
            f"{what}: {name or 'the exchange'} refused: the API key lacks the permission "
            "(PermissionDenied); grant it on the exchange (e.g. trading) or reference "
            "another key in the credentials setting"
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
