"""The one Settings object of cryptobots, validated when it is loaded.

Sources, strongest first: keyword arguments, environment variables
(`CRYPTOBOTS_<KEY>`, nested keys joined by `__`, e.g.
`CRYPTOBOTS_EXCHANGES__BINANCE__URL`), the YAML file named by `CRYPTOBOTS_CONFIG`,
then the defaults below. Unknown keys are refused, and an invalid value fails at
load with a message naming the key, the value and what is allowed. This module is
the only place that reads the environment; everything else takes a `Settings`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from pipeline.errors import ConfigurationError
from pipeline.settings_sources import CommaListEnvSource, describe, read_yaml

ENV_PREFIX = "CRYPTOBOTS_"
CONFIG_ENV = "CRYPTOBOTS_CONFIG"
# Variables that share the prefix without being settings.
NON_SETTING_ENV = (CONFIG_ENV, "CRYPTOBOTS_TEST_")

PROJECT_ROOT = Path(__file__).resolve().parents[1]

TIMEFRAME_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TIMEFRAME = re.compile(r"^([1-9][0-9]*)([smhdw])$")
_SYMBOL = re.compile(r"^[A-Z0-9]+/[A-Z0-9]+$")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
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


def default_var_dir() -> Path:
    """`./var` of the checkout when running from one, else of the working directory."""
    if (PROJECT_ROOT / "pyproject.toml").exists():
        return PROJECT_ROOT / "var"
    return Path.cwd() / "var"


def default_data_dir() -> Path | None:
    """The recorded market data beside the checkout (`../shared/data`), if it is there."""
    candidate = PROJECT_ROOT.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


def normalize_db_url(url: str) -> str:
    """Map plain `postgresql://` (and `postgres://`) URLs to the psycopg2 driver we ship.

    SQLAlchemy 2.1 maps the bare scheme to psycopg 3; the driver in requirements is
    psycopg2, so the scheme is made explicit here, once.
    """
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg2://" + url[len(bare) :]
    return url


def mask_url(url: str) -> str:
    """`url` with its password replaced by ***, safe to print and log."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


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
        if not _NAME.match(value):
            raise ValueError(
                f"exchange name {value!r} is not valid: use lowercase letters, "
                "digits and _, e.g. binance"
            )
        return value

    @field_validator("symbol")
    @classmethod
    def _symbol(cls, value: str) -> str:
        value = value.strip().upper()
        if not _SYMBOL.match(value):
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


class ValidationSettings(BaseModel):
    """How strict candle validation is."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_bad_fraction: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="a batch with a larger share of bad rows fails (after quarantining them)",
    )
    flash_move: float = Field(
        default=0.3, gt=0, description="candles whose range high/low - 1 exceeds this are flagged"
    )


class AirflowSettings(BaseModel):
    """How the DAGs are scheduled."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start_date: datetime = Field(
        default=datetime(2015, 1, 1, tzinfo=UTC),
        description="earliest data interval the DAGs run (and backfill) for, UTC",
    )
    exchange_pool_slots: int = Field(
        default=4, ge=1, description="concurrent tasks per exchange (the exchange_<name> pool)"
    )
    history_days: int = Field(
        default=150,
        ge=1,
        description="days of history the backfill_history DAG fetches (make run: enough for "
        "the promotion window and the features' 30-day look-back)",
    )
    executor: Literal["local", "celery"] = Field(
        default="local",
        description="python -m pipeline run's Airflow: local (airflow standalone, one "
        "machine) or celery (scheduler, DAG processor, triggerer, API server and Celery "
        "workers as separate processes over metadata_db_url and broker_url)",
    )
    metadata_db_url: str = Field(
        default="",
        description="Airflow's own metadata database, never the cryptobots one (both keep an "
        "alembic_version table); empty: SQLite under var_dir/airflow, which only the local "
        "executor can use",
    )
    broker_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="the Celery executor's broker (Redis)"
    )
    worker_concurrency: int = Field(
        default=2, ge=1, description="task slots of the Celery worker on the default queue"
    )
    gpu_worker_concurrency: int = Field(
        default=1, ge=1, description="task slots of the Celery worker on the gpu queue"
    )

    @field_validator("start_date")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)


TRAINING_FEATURES = (
    "ret_1",
    "ret_4",
    "ret_12",
    "ret_24",
    "ret_48",
    "ret_168",
    "ret_720",
    "vol_24",
    "vol_168",
    "trend_168",
    "trend_720",
    "drawdown_720",
    "range_1",
    "range_24",
    "close_pos",
    "volume_z_24",
    "rsi_14",
)


class TrainingSettings(BaseModel):
    """What the nightly retraining does by default (the train DAG's params start here)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    algorithms: tuple[Literal["dqn", "a2c"], ...] = Field(
        default=("a2c",),
        description="agents trained each night (DQN ensembles lost up to a third of the "
        "account in walk-forward folds where A2C ones did not: add dqn to compare)",
    )
    markets: tuple[Market, ...] = Field(
        default=(), description="markets trained each night; empty = the first of markets"
    )
    train_days: int = Field(default=730, ge=7, description="training window length")
    valid_days: int = Field(default=90, ge=2, description="validation window after it")
    features: tuple[str, ...] = Field(
        default=TRAINING_FEATURES, description="FeatureSpec feature names the agents observe"
    )
    decision_every: int = Field(
        default=24,
        ge=1,
        description="candles between decisions (24 x 1h = daily, at 00:00 UTC); "
        "fewer, slower decisions trade less noise",
    )
    dqn_steps: int = Field(default=100_000, ge=1, description="DQN environment steps")
    a2c_steps: int = Field(default=2_000_000, ge=1, description="A2C environment steps")
    dqn_envs: int = Field(default=8, ge=1, description="parallel episodes for DQN")
    a2c_envs: int = Field(default=256, ge=1, description="parallel episodes for A2C")
    episode_length: int = Field(default=60, ge=2, description="decisions per episode")
    shorting: bool = Field(default=False, description="allow short positions (action -1)")
    position_steps: int = Field(
        default=1,
        ge=1,
        le=10,
        description="positions the agent picks from, per side: 1 = flat or all in; "
        "2 = flat, half or all in (0, 0.5, 1; and -0.5, -1 when shorting); n = steps of 1/n",
    )
    position_rule: Literal["argmax", "expected"] = Field(
        default="expected",
        description="how an A2C policy's action probabilities become a position: argmax = "
        "the likeliest action's; expected = the probability-weighted mean of the actions' "
        "positions, so an ensemble split between flat and long holds part of the position "
        "instead of flipping on a near tie (in the walk-forward report the five seeds' fold "
        "returns then agreed within 10 points in 8 of 8 folds instead of 6; DQN's Q-values "
        "have no probabilities: argmax)",
    )
    fee_bps: float = Field(default=10.0, ge=0, description="taker fee, basis points")
    slippage_bps: float = Field(default=5.0, ge=0, description="slippage, basis points")
    seed: int = Field(default=0, ge=0, description="seed of weights, exploration, episodes")
    target_volatility: float | None = Field(
        default=0.2,
        gt=0,
        description="size every position to this annualized volatility (the week's realized "
        "volatility, see volatility_features), capped at the action map's position; null: "
        "unscaled (0.2 rather than 0.3: in the walk-forward report the five seeds' fold "
        "returns agreed in 6 of 8 folds instead of 4, drawdowns fell by a third, Sharpe held)",
    )
    volatility_features: tuple[str, ...] = Field(
        default=("vol_168",),
        min_length=1,
        description="the realized volatility that sizes positions is the largest of these "
        "features, each one of features (the week's, vol_168; adding the month's, vol_720, "
        "to both lost Sharpe and fold returns in the walk-forward report)",
    )
    downside_penalty: float = Field(
        default=1.0,
        ge=0,
        description="reward shaping: a losing step's log growth weighs 1 + this (0: plain; "
        "1, losses count twice: in the walk-forward report the worst fold drawdown fell from "
        "14% to 10% and the worst fold from -9% to -6% for every seed, Sharpe held at 2.0)",
    )
    folds: int = Field(
        default=4,
        ge=1,
        description="walk-forward folds the train DAG scores each algorithm on: consecutive "
        "validation windows of valid_days, each trained only on candles before it; the "
        "newest fold's model is the candidate",
    )
    ensemble: int = Field(
        default=5,
        ge=1,
        description="models trained per algorithm with different seeds and exported as one "
        "policy that averages their action probabilities (A2C) or Q-values (DQN)",
    )


class PromotionSettings(BaseModel):
    """The gates a candidate passes to become champion (unless forced with a reason)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window_days: int = Field(
        default=90, ge=2, description="the most recent window both models are re-evaluated on"
    )
    sharpe_margin: float = Field(
        default=0.1, description="the candidate's Sharpe must beat the champion's by this"
    )
    max_drawdown: float = Field(
        default=0.5, gt=0, le=1, description="the candidate's max drawdown must stay within this"
    )
    min_dsr: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description="evidence gate, every model including the first: the deflated Sharpe ratio "
        "of its walk-forward folds (or, without them, the probabilistic Sharpe ratio on the "
        "promotion window) must reach this",
    )
    max_fold_drawdown: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description="evidence gate: the deepest drawdown of any walk-forward fold",
    )
    require_approval: bool = Field(
        default=False,
        description="a person approves every promotion in Airflow's Required Actions "
        "(always asked when trading_mode is live)",
    )
    approval_timeout_hours: float = Field(
        default=24.0, gt=0, description="an approval unanswered this long counts as a rejection"
    )


class RiskSettings(BaseModel):
    """Limits every order of the trader passes (a refusal is recorded, never raised)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_position_notional: float = Field(
        default=5_000.0, gt=0, description="largest position per market, in its quote currency"
    )
    max_order_notional: float = Field(
        default=2_500.0, gt=0, description="largest single order, in quote currency"
    )
    max_leverage: float = Field(
        default=1.0, ge=0, description="gross exposure / equity cap (shorts borrow against it)"
    )
    max_orders_per_hour: int = Field(default=30, ge=1, description="per market")
    daily_loss_limit: float = Field(
        default=0.05, gt=0, le=1, description="HALT after losing this fraction of the day's start"
    )
    flatten_on_halt: bool = Field(default=False, description="close positions when halting")
    flash_move: float = Field(
        default=0.10, gt=0, description="a candle moving more than this pauses new entries"
    )
    flash_pause_candles: int = Field(default=6, ge=0, description="how long the pause lasts")
    stale_after_timeframes: float = Field(
        default=2.0, gt=0, description="no trade when the last closed candle is older than this"
    )
    breaker_errors: int = Field(
        default=5, ge=1, description="consecutive exchange errors that open the circuit breaker"
    )
    breaker_cooldown_seconds: float = Field(
        default=60.0, ge=0, description="how long the breaker stays open"
    )


class ServingSettings(BaseModel):
    """The trader daemon (`python -m serving`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    markets: tuple[Market, ...] = Field(
        default=(), description="markets traded; empty = the first of markets"
    )
    model_poll_seconds: float = Field(
        default=10.0, gt=0, description="how often the registry is asked for a new champion"
    )
    loop_seconds: float = Field(
        default=1.0, gt=0, description="how often exchange clocks are checked for a closed candle"
    )
    host: str = Field(default="127.0.0.1", description="health, readiness, metrics and control")
    port: int = Field(default=8790, ge=0, le=65535, description="0 = any free port")
    control_token: SecretStr | None = Field(
        default=None,
        description="bearer token of the pause/resume/flatten endpoints; unset = they answer 401",
    )
    cancel_on_exit: bool = Field(
        default=False, description="on SIGTERM/SIGINT, cancel the live orders still open"
    )
    paper_cash: float = Field(default=10_000.0, gt=0, description="paper account's quote cash")
    fee_bps: float = Field(default=10.0, ge=0, description="paper taker fee, basis points")
    borrow_rate_hourly: float = Field(
        default=0.00001, ge=0, description="paper margin: interest per hour on borrowed base"
    )
    maintenance_margin: float = Field(
        default=0.1, gt=0, lt=1, description="paper margin: equity/short value that liquidates"
    )
    risk: RiskSettings = Field(default_factory=RiskSettings)
    failover_seconds: float = Field(
        default=15.0,
        gt=0,
        description="a trader that stops renewing its markets' lease (killed, frozen, cut "
        "off) is replaced by a standby within this; its lease lasts two thirds of it",
    )
    standby: bool = Field(
        default=False,
        description="start as a standby: wait for the markets' lease instead of refusing to "
        "start while another trader holds it",
    )
    watch_enabled: bool = Field(
        default=True,
        description="the champion watch: roll back (or flatten and pause) when the champion's "
        "drawdown goes beyond what its backtest made usual",
    )
    watch_max_drawdown: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="the champion watch's own drawdown limit, used beside (below) the "
        "backtest's, or alone for a model without one",
    )


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
            if not _SYMBOL.match(symbol):
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

    @field_validator("venue_groups")
    @classmethod
    def _venue_groups(cls, value: tuple[tuple[Market, ...], ...]) -> tuple[tuple[Market, ...], ...]:
        for group in value:
            names = ", ".join(str(m) for m in group)
            if len(group) < 2 or len({m.exchange for m in group}) != len(group):
                raise ValueError(f"venue group [{names}] needs two or more different exchanges")
            if len({m.symbol.split("/")[0] for m in group}) != 1:
                raise ValueError(f"venue group [{names}] must trade one base asset everywhere")
            if len({m.timeframe for m in group}) != 1:
                raise ValueError(f"venue group [{names}] mixes timeframes: use one")
        return value


def _default_exchanges() -> dict[str, ExchangeConfig]:
    # Offline default: the exchange simulator on loopback speaks Binance's API.
    return {"binance": ExchangeConfig(ccxt_id="binance", url="http://127.0.0.1:8900")}


def _default_markets() -> tuple[Market, ...]:
    return tuple(
        Market.model_validate(text)
        for text in ("binance:BTC/USDT:1h", "binance:ETH/USDT:1h", "binance:ETH/BTC:1h")
    )


class Settings(BaseSettings):
    """Everything configurable about cryptobots, typed and frozen."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    var_dir: Path = Field(
        default_factory=default_var_dir,
        description="where the embedded defaults write (database, artifacts, logs)",
    )
    db_url: str = Field(default="", description="SQLAlchemy URL; empty = SQLite file under var_dir")
    artifact_root: str = Field(
        default="", description="model artifact root: a folder or any fsspec URL (s3://...)"
    )
    data_dir: Path | None = Field(
        default_factory=default_data_dir,
        description="recorded market data served by the exchange simulator",
    )
    exchanges: dict[str, ExchangeConfig] = Field(default_factory=_default_exchanges)
    markets: Annotated[tuple[Market, ...], NoDecode] = Field(default_factory=_default_markets)
    trading_mode: Literal["paper", "live"] = Field(
        default="paper", description="paper unless told otherwise; live also needs keys"
    )
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    airflow: AirflowSettings = Field(default_factory=AirflowSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    promotion: PromotionSettings = Field(default_factory=PromotionSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    arbitrage: ArbitrageSettings = Field(default_factory=ArbitrageSettings)
    require_gpu: bool = Field(
        default=False, description="fail (doctor, training) instead of falling back to CPU"
    )

    @field_validator("var_dir")
    @classmethod
    def _absolute_var_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("data_dir")
    @classmethod
    def _data_dir(cls, value: Path | None) -> Path | None:
        if value is None or str(value) == "":
            return None
        return value.expanduser().resolve()

    @field_validator("exchanges", mode="before")
    @classmethod
    def _exchange_names(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            for name in value:
                if not _NAME.match(str(name)):
                    raise ValueError(
                        f"exchange name {name!r} is not valid: use lowercase letters, digits, _"
                    )
        return value

    @field_validator("markets", mode="before")
    @classmethod
    def _markets_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part for part in (p.strip() for p in text.split(",")) if part]
        return value

    @field_validator("db_url")
    @classmethod
    def _db_url(cls, value: str, info: ValidationInfo) -> str:
        var_dir = info.data.get("var_dir", default_var_dir())
        url = normalize_db_url(value.strip() or f"sqlite:///{var_dir / 'cryptobots.db'}")
        _check_db_url(url)
        return url

    @field_validator("artifact_root")
    @classmethod
    def _artifact_root(cls, value: str, info: ValidationInfo) -> str:
        return value.strip() or str(info.data.get("var_dir", default_var_dir()) / "artifacts")

    @model_validator(mode="after")
    def _resolve_exchanges(self) -> Settings:
        exchanges = {
            name: cfg if cfg.ccxt_id else cfg.model_copy(update={"ccxt_id": name})
            for name, cfg in self.exchanges.items()
        }
        object.__setattr__(self, "exchanges", exchanges)
        unknown = sorted({m.exchange for m in self.markets} - set(exchanges))
        if unknown:
            raise ValueError(
                f"{ENV_PREFIX}MARKETS uses exchange(s) {unknown} that are not configured: "
                f"add them under exchanges (e.g. {ENV_PREFIX}EXCHANGES__{unknown[0].upper()}"
                f"__CCXT_ID=...) or fix the market; configured: {sorted(exchanges)}"
            )
        return self

    @property
    def masked_db_url(self) -> str:
        """The database URL with its password hidden."""
        return mask_url(self.db_url)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            CommaListEnvSource(settings_cls),
        ]
        path = _config_file(os.environ)
        if path is not None:
            sources.append(InitSettingsSource(settings_cls, read_yaml(path, CONFIG_ENV)))
        return tuple(sources)


def _config_file(environ: Mapping[str, str]) -> Path | None:
    config_file = environ.get(CONFIG_ENV)
    return Path(config_file).expanduser() if config_file else None


def _check_db_url(url: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(
            f"database URL {mask_url(url)!r} is not valid: write a SQLAlchemy URL such as "
            "sqlite:////abs/path.db or postgresql://user:password@host:5432/dbname"
        ) from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError(
            f"database URL {mask_url(url)!r} uses {parsed.get_backend_name()!r}: "
            "cryptobots supports sqlite and postgresql"
        )


def _reject_unknown_env(environ: Mapping[str, str]) -> None:
    fields = {name.upper() for name in Settings.model_fields}
    unknown = sorted(
        key
        for key in environ
        if key.startswith(ENV_PREFIX)
        and not key.startswith(NON_SETTING_ENV)
        and key[len(ENV_PREFIX) :].split("__")[0].upper() not in fields
    )
    if unknown:
        raise ConfigurationError(
            f"unknown setting(s) {', '.join(unknown)}: known settings are "
            f"{', '.join(ENV_PREFIX + f for f in sorted(fields))} (nested keys join with __)"
        )


def load_settings(**overrides: Any) -> Settings:
    """Load and validate the settings; raise ConfigurationError naming each bad key."""
    _reject_unknown_env(os.environ)
    try:
        return Settings(**overrides)
    except ValidationError as error:
        path = _config_file(os.environ)
        data = read_yaml(path, CONFIG_ENV) if path is not None else None
        lines = [
            describe(e, prefix=ENV_PREFIX, environ=os.environ, yaml_file=path, yaml_data=data)
            for e in error.errors()
        ]
        raise ConfigurationError("; ".join(lines)) from None
    except SettingsError as error:
        field = str(error).split('"')[1] if str(error).count('"') >= 2 else ""
        named = sorted(
            k for k in os.environ if k.upper().startswith(f"{ENV_PREFIX}{field.upper()}")
        )
        raise ConfigurationError(
            f"invalid setting {', '.join(named) or field}: not valid JSON; write a list as "
            '["a", "b"] or a,b and a mapping as {"key": "value"}'
        ) from None
