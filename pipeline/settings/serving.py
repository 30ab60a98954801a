"""The trader daemon (`python -m serving`) and the risk limits every order passes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from pipeline.settings.exchanges import Market


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
    margin: bool = Field(
        default=False,
        description="live shorts on the exchange's cross-margin account: a short sell "
        "borrows the base it lacks, the buy back repays (with --live and "
        "CRYPTOBOTS_TRADING_MODE=live; paper shorts always use paper margin)",
    )
    margin_close_level: float = Field(
        default=1.5,
        gt=1,
        description="live margin: at or below this margin level (assets / what is owed; "
        "Binance liquidates at 1.1) shorts are bought back and no new one opens",
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
