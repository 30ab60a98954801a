"""The one exception tree of cryptobots.

Every error a user can act on is a `CryptobotsError`; its message names the thing
that is wrong and the fix. Library errors (ccxt, SQLAlchemy, pydantic) are
translated into this tree in one adapter each, with `raise ... from e`.
"""


class CryptobotsError(Exception):
    """Base of every error cryptobots raises on purpose."""


class ConfigurationError(CryptobotsError):
    """A setting is invalid, or a configured service cannot be reached."""


class TemporaryExchangeError(CryptobotsError):
    """The exchange failed in a way that a retry may fix (timeout, 429, 5xx).

    `retry_after` is the wait in seconds the exchange asked for (0 when it did not).
    """

    def __init__(self, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ExchangeRejected(CryptobotsError):
    """The exchange refused a request for good (bad symbol, insufficient funds)."""


class OrderNotFound(ExchangeRejected):
    """The exchange has no order by that id: already gone, or it never arrived."""


class HistoryOutOfReach(ExchangeRejected):
    """The exchange's candle endpoint does not reach back that far (Kraken: the 720
    most recent candles): asking again would silently answer later candles."""


class DataValidationError(CryptobotsError):
    """Input data breaks a rule; nothing from the offending batch was written."""


class ModelRejected(CryptobotsError):
    """A model artifact failed a check (checksum, signature, parity, gates)."""


class PromotionConflict(CryptobotsError):
    """Another promotion moved the alias first; nothing was changed by this one."""


class VersionNotFound(CryptobotsError):
    """No such model version."""
