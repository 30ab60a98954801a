"""The simulator's markets on its clock: shifted history, replay, books and tickers.

With `shift_to_now`, every recording is moved by one offset (a whole number of
the largest timeframe) so that the latest candle closes at the clock's start;
after a recording ends it is replayed from its beginning, each cycle's prices
scaled by the recording's overall growth so that prices continue without a jump.
Only candles that have closed on the clock are served.

Books are centred by `Pricing`: on a market's last close by default; with
consistent books, a cross X/Y that the exchange also serves as X/Q and Y/Q is
centred on mid(X/Q) / mid(Y/Q), so a triangle's books agree up to tick rounding;
a planted mispricing then moves one market's mid for a while of real time.
Klines are never touched: they stay exactly as recorded, so a cross's book may
sit away from its own candles.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pipeline.exchanges.simulator.recordings import Recording

USD_LIKE = {"USD", "USDT", "USDC", "BUSD", "TUSD", "FDUSD", "DAI"}
HALF_SPREAD_BPS = 1.0  # documented book: mid +- max(1 bp, one tick), then one tick per level
BOOK_LEVELS = 100


@dataclass
class Clock:
    """Simulator time in ms: real time, optionally sped up, counted from the start."""

    speed: float = 1.0
    start_real_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def now_ms(self) -> int:
        elapsed = time.time() * 1000 - self.start_real_ms
        return int(self.start_real_ms + elapsed * self.speed)


def filters_for(base: str, quote: str, price: float) -> dict[str, float]:
    """Price tick, lot step and minimum notional, scaled like Binance's to the price."""
    unit = 1.0 if quote in USD_LIKE else 1e-5
    price = price if math.isfinite(price) and price > 0 else 1.0
    tick = 10.0 ** max(math.floor(math.log10(price * 1e-6)), -8)
    step = 10.0 ** max(math.ceil(math.log10(0.1 * unit / price)), -8)
    return {"tick": tick, "step": step, "min_notional": 5.0 * unit, "min_qty": step}


class MarketFeed:
    """One recording as served: shifted by `offset_ms`, replayed when `replay` is on."""

    def __init__(self, recording: Recording, offset_ms: int, replay: bool) -> None:
        self.recording = recording
        self.offset_ms = offset_ms
        self.replay = replay
        self.tf = recording.timeframe_ms
        self.span = recording.span_ms
        finite = recording.close[np.isfinite(recording.close) & (recording.close > 0)]
        self.growth = float(finite[-1] / finite[0]) if len(finite) else 1.0
        self.filters = filters_for(recording.base, recording.quote, float(finite[-1]))
        self.pricing: Pricing | None = None

    @property
    def first_ts(self) -> int:
        return int(self.recording.ts[0]) + self.offset_ms

    def candles(self, start: int, end: int, limit: int, now: int) -> list[list]:
        """Binance klines rows with open time in [start, end] closed by `now`, at most `limit`."""
        last_open = min(end, now - self.tf)
        rows: list[list] = []
        if last_open < start:
            return rows
        base_ts = self.recording.ts + self.offset_ms
        cycle = max(0, (start - self.first_ts) // self.span) if self.replay else 0
        while len(rows) < limit:
            shift = cycle * self.span
            lo = int(np.searchsorted(base_ts, start - shift, side="left"))
            hi = int(np.searchsorted(base_ts, last_open - shift, side="right"))
            for i in range(lo, min(hi, lo + limit - len(rows))):
                rows.append(self._row(i, int(base_ts[i]) + shift, cycle))
            if not self.replay or hi < len(base_ts):
                break
            cycle += 1
            if self.first_ts + cycle * self.span > last_open:
                break
        return rows

    def last_price(self, now: int) -> float:
        """Close of the latest closed candle (the book's mid); the first one before any."""
        last_open = now - self.tf
        base_ts = self.recording.ts + self.offset_ms
        cycle = 0
        if self.replay and last_open >= self.first_ts:
            cycle = (last_open - self.first_ts) // self.span
        i = int(np.searchsorted(base_ts, last_open - cycle * self.span, side="right")) - 1
        if i < 0:
            return float(self.recording.close[0])
        return float(self._row(i, int(base_ts[i]), cycle)[4])

    def mid(self, now: int) -> float:
        """The book's centre: the last close, or what `pricing` makes of it."""
        if self.pricing is None:
            return self.last_price(now)
        return self.pricing.mid(self, now)

    def _row(self, i: int, ts: int, cycle: int) -> list:
        text = self.recording.text[i]
        if cycle:
            scale = self.growth**cycle
            text = [*(_scaled(value, scale) for value in text[:4]), text[4]]
            if i == 0:
                text = self._seam(text, cycle)
        open_, high, low, close, volume = (str(value) for value in text)
        quote_volume = _product(close, volume)
        return [
            ts,
            open_,
            high,
            low,
            close,
            volume,
            ts + self.tf - 1,
            quote_volume,
            0,
            "0",
            "0",
            "0",
        ]

    def _seam(self, text: list, cycle: int) -> list:
        """The first candle of a replay opens at the close before it: scaling makes its
        close continue the price, but its recorded open (a listing's first print is
        often far off) would be a jump no market makes at a seam."""
        try:
            before = float(self.recording.text[-1][3]) * self.growth ** (cycle - 1)
            close, low = float(text[3]), float(text[2])
        except ValueError:
            return text  # a malformed recorded row stays as recorded
        return [_fmt(before), _fmt(max(before, close)), _fmt(min(low, before, close)), *text[3:]]

    def book(self, now: int, depth: int) -> tuple[list[list[str]], list[list[str]]]:
        """A symmetric book around `mid`: HALF_SPREAD_BPS, one tick between levels."""
        mid = self.mid(now)
        tick = self.filters["tick"]
        half = max(mid * HALF_SPREAD_BPS / 10_000, tick)
        best_bid = math.floor((mid - half) / tick) * tick
        best_ask = math.ceil((mid + half) / tick) * tick
        size = max(self.filters["step"] * 1000, 10 * self.filters["min_notional"] / mid)
        levels = range(min(depth, BOOK_LEVELS))
        bids = [[_fmt(best_bid - k * tick), _fmt(size * (1 + k))] for k in levels]
        asks = [[_fmt(best_ask + k * tick), _fmt(size * (1 + k))] for k in levels]
        return bids, asks


@dataclass(frozen=True)
class Plant:
    """A planted mispricing: the book mid of `symbol` (Binance's id, e.g. ETHBTC; ETH/BTC
    is accepted) times (1 + bps / 10_000) for `seconds` of real time, whatever the
    market clock's speed, so that every triangle through it has that edge at the mids."""

    symbol: str
    bps: float
    seconds: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "symbol", str(self.symbol).replace("/", "").upper())
        try:
            object.__setattr__(self, "bps", float(self.bps))
            object.__setattr__(self, "seconds", float(self.seconds))
        except (TypeError, ValueError):
            raise ValueError(
                f"plant {self.symbol}: bps {self.bps!r} and seconds {self.seconds!r} "
                "must be numbers"
            ) from None
        if not math.isfinite(self.bps) or self.bps <= -10_000:
            raise ValueError(f"plant {self.symbol}: bps {self.bps} must be finite and > -10000")
        if not math.isfinite(self.seconds) or self.seconds <= 0:
            raise ValueError(f"plant {self.symbol}: seconds {self.seconds} must be > 0")


def cross_legs(markets: dict[str, MarketFeed]) -> dict[str, tuple[MarketFeed, MarketFeed]]:
    """For each market X/Y also served as X/Q and Y/Q: those two legs (Q USD-like if it can be).

    A market whose legs are crosses themselves keeps its own close: legs are priced
    at their own closes, never derived in turn.
    """
    by_pair = {(f.recording.base, f.recording.quote): f for f in markets.values()}
    legs: dict[str, tuple[MarketFeed, MarketFeed]] = {}
    for (base, quote), feed in by_pair.items():
        common = {q for b, q in by_pair if b == base} & {q for b, q in by_pair if b == quote}
        common.discard(quote)
        if common:
            q = min(common, key=lambda c: (c not in USD_LIKE, c))
            legs[feed.recording.market_id] = (by_pair[(base, q)], by_pair[(quote, q)])
    derived = set(legs)
    return {
        market_id: pair
        for market_id, pair in legs.items()
        if not {leg.recording.market_id for leg in pair} & derived
    }


class Pricing:
    """Where each market's book is centred: its last close, or with `consistent` the
    cross of its two legs, then times the market's live plant (if any)."""

    def __init__(
        self,
        markets: dict[str, MarketFeed],
        consistent: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.markets = markets
        self.legs = cross_legs(markets) if consistent else {}
        self.clock = clock
        self._plants: dict[str, tuple[Plant, float]] = {}
        self._lock = threading.Lock()

    def mid(self, feed: MarketFeed, now: int) -> float:
        """The centre of `feed`'s book at `now` (market clock); plants run on real time."""
        market_id = feed.recording.market_id
        legs = self.legs.get(market_id)
        if legs is None:
            mid = feed.last_price(now)
        else:
            mid = legs[0].last_price(now) / legs[1].last_price(now)
        return mid * self._factor(market_id)

    def plant(self, plant: Plant) -> None:
        """Start `plant`, replacing any on the same market; ValueError for an unknown one."""
        if plant.symbol not in self.markets:
            raise ValueError(
                f"unknown symbol {plant.symbol!r}: this exchange serves "
                f"{', '.join(sorted(self.markets))}"
            )
        with self._lock:
            self._plants[plant.symbol] = (plant, self.clock() + plant.seconds)

    def plants(self) -> list[dict[str, float | str]]:
        """The live plants, each with its seconds left."""
        now = self.clock()
        with self._lock:
            live = [(p, until) for p, until in self._plants.values() if until > now]
        return [
            {"symbol": p.symbol, "bps": p.bps, "seconds": p.seconds, "seconds_left": until - now}
            for p, until in sorted(live, key=lambda item: item[0].symbol)
        ]

    def clear(self) -> None:
        """End every plant now."""
        with self._lock:
            self._plants.clear()

    def _factor(self, market_id: str) -> float:
        with self._lock:
            entry = self._plants.get(market_id)
            if entry is None:
                return 1.0
            plant, until = entry
            if self.clock() >= until:
                del self._plants[market_id]
                return 1.0
        return 1.0 + plant.bps / 10_000


def _scaled(text: str, scale: float) -> str:
    try:
        return _fmt(float(text) * scale)
    except ValueError:
        return text


def _product(a: str, b: str) -> str:
    try:
        return _fmt(float(a) * float(b))
    except ValueError:
        return "0"


def _fmt(value: float) -> str:
    return np.format_float_positional(value, precision=10, unique=True, trim="-")
