"""Arbitrage: the traded cycles, the studied triangles and venue groups, transfer costs."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.settings.exchanges import SYMBOL, Market


class Withdrawal(BaseModel):
    """What moving one asset between venues costs: a fee in the asset and a delay."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fee: float = Field(default=0.0, ge=0, description="withdrawal fee, in units of the asset")
    minutes: float = Field(default=60.0, ge=0, description="typical time until credited")


def _default_triangles() -> tuple[tuple[Market, ...], ...]:
    return tuple(
        tuple(Market.model_validate(text) for text in group)
        for group in (
            ("binance:BTC/USDT:1h", "binance:ETH/USDT:1h", "binance:ETH/BTC:1h"),
            ("binance:BTC/USDT:1m", "binance:SOL/USDT:1m", "binance:SOL/BTC:1m"),
        )
    )


def _default_venue_groups() -> tuple[tuple[Market, ...], ...]:
    return tuple(
        tuple(Market.model_validate(text) for text in group)
        for group in (
            (
                "bitstamp:BTC/USD:1h",
                "bitfinex:BTC/USD:1h",
                "gemini:BTC/USD:1h",
                "coinbase:BTC/USD:1h",
            ),
            ("binanceus:BTC/USDC:1m", "kraken:BTC/USDC:1m"),
        )
    )


def _default_withdrawals() -> dict[str, Withdrawal]:
    # Typical published figures (late 2020s); set your venues' own.
    return {
        "BTC": Withdrawal(fee=0.0002, minutes=30),
        "ETH": Withdrawal(fee=0.002, minutes=5),
        "SOL": Withdrawal(fee=0.01, minutes=1),
        "USDT": Withdrawal(fee=1.0, minutes=5),
        "USDC": Withdrawal(fee=1.0, minutes=5),
        "USD": Withdrawal(fee=0.0, minutes=1440),
    }


def _check_group(group: tuple[Market, ...], what: str) -> None:
    """ValueError unless `group` is one base asset on two or more different exchanges."""
    names = ", ".join(str(m) for m in group)
    if len(group) < 2 or len({m.exchange for m in group}) != len(group):
        raise ValueError(f"{what} [{names}] needs two or more different exchanges")
    if len({m.symbol.split("/")[0] for m in group}) != 1:
        raise ValueError(f"{what} [{names}] must trade one base asset everywhere")
    if len({m.timeframe for m in group}) != 1:
        raise ValueError(f"{what} [{names}] mixes timeframes: use one")


class ArbitrageSettings(BaseModel):
    """Arbitrage: cycles inside one exchange (executed) and spreads across venues (reported)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    home: str = Field(default="USDT", description="currency every cycle starts and ends in")
    max_length: int = Field(default=4, ge=3, le=6, description="most legs in a cycle")
    min_edge_bps: float = Field(
        default=5.0, ge=0, description="smallest gain after fees and rounding worth trading, bps"
    )
    taker_fee_bps: float | None = Field(
        default=None, ge=0, description="taker fee of every leg; None = the exchange's own"
    )
    exchange: str = Field(default="binance", description="the venue whose cycles are traded")
    symbols: tuple[str, ...] = Field(
        default=("BTC/USDT", "ETH/USDT", "ETH/BTC"),
        description="markets whose books the arbitrage trader polls",
    )
    poll_seconds: float = Field(default=1.0, gt=0, description="pause between book polls")
    book_depth: int = Field(default=20, ge=1, le=5000, description="levels fetched per book")
    max_cycle_notional: float = Field(
        default=1_000.0, gt=0, description="most home currency put into one cycle"
    )
    max_cycles_per_hour: int = Field(default=30, ge=1, description="cycles started per hour")
    daily_loss_limit: float = Field(
        default=100.0, gt=0, description="realized loss in home currency that halts for the day"
    )
    breaker_leg_failures: int = Field(
        default=3, ge=1, description="leg failures in a row that open the circuit breaker"
    )
    breaker_cooldown_seconds: float = Field(
        default=300.0, ge=0, description="how long the breaker stays open"
    )
    paper_balances: dict[str, float] = Field(
        default_factory=lambda: {"USDT": 10_000.0},
        description="the paper account's starting balances",
    )
    sweep_dust: bool = Field(
        default=True,
        description="sell what cycles leave in other currencies back to home (one order) "
        "once it passes the minimums of a market converting it directly",
    )
    triangles: tuple[tuple[Market, ...], ...] = Field(
        default_factory=_default_triangles,
        description="triangles studied on stored candles (three markets of one exchange)",
    )
    venue_groups: tuple[tuple[Market, ...], ...] = Field(
        default_factory=_default_venue_groups,
        description="the same asset on several venues, studied for cross-exchange spreads",
    )
    quote_rates: dict[str, float] = Field(
        default_factory=lambda: {"USD": 1.0, "USDT": 1.0, "USDC": 1.0},
        description="value in USD of each quote currency where no observed rate is stored",
    )
    withdrawals: dict[str, Withdrawal] = Field(default_factory=_default_withdrawals)
    cross_markets: tuple[Market, ...] = Field(
        default_factory=lambda: _default_venue_groups()[1],
        description="the venue group the cross trader (`--strategy cross`) trades: the same "
        "asset on two or more configured exchanges (the timeframe is not used)",
    )
    unwind_seconds: float = Field(
        default=10.0,
        gt=0,
        description="cross trades: the longest a one-sided fill may stay open before the "
        "cheaper exit (hedge or unwind) has closed it",
    )
    inventory_band: float = Field(
        default=0.3,
        gt=0,
        lt=1,
        description="cross trades: how far a venue's share of an asset held on several venues "
        "may drift from an equal share before a rebalance is proposed (report only)",
    )
    cross_paper_balances: dict[str, float] = Field(
        default_factory=lambda: {"USDC": 10_000.0, "USD": 10_000.0, "BTC": 0.2},
        description="the paper cross trader's starting inventory on each venue",
    )
    study_days: int = Field(
        default=60, ge=1, description="hourly history studied per group, ending at its last hour"
    )
    study_threshold_bps: float = Field(
        default=10.0, ge=0, description="an edge above this counts as an opportunity in the study"
    )

    def group_keys(self) -> list[str]:
        """One key per configured group ("triangle:0", ..., "cross:0", ...), in order."""
        return [f"triangle:{i}" for i in range(len(self.triangles))] + [
            f"cross:{i}" for i in range(len(self.venue_groups))
        ]

    @field_validator("home")
    @classmethod
    def _home(cls, value: str) -> str:
        value = value.strip().upper()
        if not re.match(r"^[A-Z0-9]+$", value):
            raise ValueError(f"home currency {value!r} is not valid: write e.g. USDT")
        return value

    @field_validator("symbols")
    @classmethod
    def _symbols(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        symbols = tuple(s.strip().upper() for s in value)
        for symbol in symbols:
            if not SYMBOL.match(symbol):
                raise ValueError(f"symbol {symbol!r} is not valid: write BASE/QUOTE, e.g. ETH/BTC")
        return symbols

    @field_validator("triangles")
    @classmethod
    def _triangles(cls, value: tuple[tuple[Market, ...], ...]) -> tuple[tuple[Market, ...], ...]:
        for group in value:
            names = ", ".join(str(m) for m in group)
            if len(group) != 3:
                raise ValueError(f"triangle [{names}] needs exactly three markets")
            if len({(m.exchange, m.timeframe) for m in group}) != 1:
                raise ValueError(
                    f"triangle [{names}] mixes exchanges or timeframes: a triangle is three "
                    "markets of one exchange with one timeframe"
                )
            currencies = [c for m in group for c in m.symbol.split("/")]
            if any(currencies.count(c) != 2 for c in currencies):
                raise ValueError(
                    f"triangle [{names}] does not close: its three markets must join three "
                    "currencies, each in exactly two markets (e.g. BTC/USDT, ETH/USDT, ETH/BTC)"
                )
        return value

    @field_validator("cross_markets")
    @classmethod
    def _cross_markets(cls, value: tuple[Market, ...]) -> tuple[Market, ...]:
        _check_group(value, "arbitrage.cross_markets")
        return value

    @field_validator("venue_groups")
    @classmethod
    def _venue_groups(cls, value: tuple[tuple[Market, ...], ...]) -> tuple[tuple[Market, ...], ...]:
        for group in value:
            _check_group(group, "venue group")
        return value
