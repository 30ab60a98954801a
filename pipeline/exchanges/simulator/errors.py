"""The simulator's one error type: an error answered the way Binance does."""

from __future__ import annotations


class BinanceError(Exception):
    """An error answered the way Binance does: HTTP status and {"code", "msg"}."""

    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg


class KrakenError(Exception):
    """An error answered the way Kraken does: HTTP 200 and {"error": ["EClass:Message"]}."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text
