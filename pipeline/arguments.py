"""Command-line flags checked where they are parsed, for every command of both CLIs.

Each function here is an argparse `type=`: it turns the text the user typed into a
plain value or raises `ArgumentTypeError` saying what is wrong and the fix. `Parser`
then reports it as `error: argument --steps: ...` naming the flag as typed, in a few
lines, exit 2, before anything is opened, stored or started.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from typing import NoReturn

from pipeline.settings import Market


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are two lines: the error, then where help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n(see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """An integer >= 1 (steps, episodes, folds, days)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0 (a seed)."""
    return _int_at_least(text, 0)


def port(text: str) -> int:
    """A TCP port, 0 meaning any free one."""
    value = _int_at_least(text, 0)
    if value > 65_535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port: use 1..65535 (0: any free)")
    return value


def finite_float(text: str) -> float:
    """A real number, not nan or inf."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number, e.g. 25 or 2.5") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number, e.g. 25 or 2.5")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (basis points, rates)."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative: give a number >= 0")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (seconds, speeds)."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def share(text: str) -> float:
    """A finite number in [0, 1] (a rate of faults)."""
    value = finite_float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share: give a number from 0 to 1")
    return value


def iso_time(text: str) -> int:
    """An ISO date or datetime, UTC unless it says otherwise -> ms since the epoch."""
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO date or datetime, e.g. 2020-01-01 or 2020-01-01T06:00"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def market(text: str) -> Market:
    """`exchange:BASE/QUOTE:timeframe`, e.g. binance:BTC/USDT:1h."""
    from pydantic import ValidationError

    try:
        return Market.model_validate(text)
    except ValidationError as error:
        first = error.errors()[0]
        raise argparse.ArgumentTypeError(str(first["msg"]).removeprefix("Value error, ")) from None


def http_url(text: str) -> str:
    """An http:// or https:// URL with a host, e.g. http://airflow-host:8080."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a URL: {error}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an http(s) URL with a host, e.g. http://airflow-host:8080"
        )
    return text


def balance(text: str) -> tuple[str, float]:
    """`ASSET=AMOUNT`, e.g. USDT=10000 -> ("USDT", 10000.0)."""
    asset, _, amount = text.partition("=")
    try:
        value = non_negative_float(amount)
    except argparse.ArgumentTypeError:
        value = -1.0
    if not asset.strip().isalnum() or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: write ASSET=AMOUNT, e.g. USDT=10000")
    return asset.strip().upper(), value


def key_secret(text: str) -> tuple[str, str]:
    """`KEY:SECRET`, both non-empty."""
    key, _, secret = text.partition(":")
    if not key or not secret:
        raise argparse.ArgumentTypeError("write KEY:SECRET, both non-empty (value not shown)")
    return key, secret


def plant(text: str) -> tuple[str, float, float]:
    """`SYMBOL:BPS:SECONDS`, e.g. ETHBTC:40:600."""
    parts = text.split(":")
    try:
        symbol, bps, seconds = parts[0], finite_float(parts[1]), positive_float(parts[2])
    except (IndexError, argparse.ArgumentTypeError):
        symbol = ""
    if len(parts) != 3 or not symbol.isalnum():
        raise argparse.ArgumentTypeError(f"{text!r}: write SYMBOL:BPS:SECONDS, e.g. ETHBTC:40:600")
    return symbol.upper(), bps, seconds


def counter(text: str) -> tuple[float, float]:
    """`LIMIT:DECAY`, both > 0, e.g. 15:0.33 (Kraken's Starter API counter)."""
    limit, _, decay = text.partition(":")
    try:
        return positive_float(limit), positive_float(decay)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: write LIMIT:DECAY, both > 0, e.g. 15:0.33"
        ) from None


def int_list(text: str) -> list[int]:
    """Comma-separated integers >= 0, e.g. 0,1,2 (seeds)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give comma-separated integers >= 0, e.g. 0,1,2,3,4"
        )
    return values


def choice_list(choices: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    """Comma-separated names, each one of `choices`, e.g. dqn,a2c."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(p.strip().lower() for p in text.split(",") if p.strip())
        unknown = [n for n in names if n not in choices]
        if not names or unknown:
            raise argparse.ArgumentTypeError(
                f"{text!r}: give comma-separated names among {', '.join(choices)}"
                + (f" ({', '.join(unknown)} unknown)" if unknown else "")
            )
        return names

    parse.__name__ = "choice_list"
    return parse


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} is too small: give a whole number >= {low}")
    return value
