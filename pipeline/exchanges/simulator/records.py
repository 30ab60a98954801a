"""What a simulated account holds (balances, orders, trades; a cross-margin wallet with
its loans, interest and liquidations) and how Binance shows it.

Quantities are kept as floats and formatted on output with `fmt`, as Binance's decimal
strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TAKER_FEE = 0.001
MAKER_FEE = 0.001
DEFAULT_BALANCES = {"USDT": 10_000.0}


@dataclass(frozen=True)
class MarginTerms:
    """Binance's cross-margin terms (Cross Margin Classic): what a loan costs and when the
    exchange closes the account. Margin level = total asset value / (borrowed + interest)."""

    daily_rate: float = 0.00024  # interest per day on borrowed amounts, every asset
    max_leverage: float = 3.0  # borrowed + interest at most (max_leverage - 1) x net assets
    liquidation_level: float = 1.1  # at or below it the exchange closes every position
    liquidation_fee: float = 0.01  # of what the liquidation traded, in the quote asset
    quote: str = "USDT"  # what assets are valued in

    def __post_init__(self) -> None:
        if not (self.daily_rate >= 0 and self.max_leverage > 1 and self.liquidation_level > 1):
            raise ValueError(
                f"margin terms {self}: need daily_rate >= 0, max_leverage > 1 and "
                "liquidation_level > 1"
            )

    @property
    def hourly_rate(self) -> float:
        return self.daily_rate / 24


@dataclass
class Order:
    """One order as Binance reports it (quantities as floats, formatted on output)."""

    symbol: str
    order_id: int
    client_order_id: str
    side: str  # BUY / SELL
    type: str  # MARKET / LIMIT / LIMIT_MAKER
    price: float
    orig_qty: float
    executed_qty: float = 0.0
    quote_qty: float = 0.0
    status: str = "NEW"
    time_in_force: str = "GTC"
    time: int = 0
    update_time: int = 0


@dataclass
class Trade:
    symbol: str
    id: int
    order_id: int
    price: float
    qty: float
    commission: float
    commission_asset: str
    time: int
    is_buyer: bool
    is_maker: bool


@dataclass
class Wallet:
    """Free and locked balances with their orders and trades: the spot account, or the
    cross-margin account beside it (Binance keeps their orders apart)."""

    balances: dict[str, float] = field(default_factory=dict)
    locked: dict[str, float] = field(default_factory=dict)
    orders: list[Order] = field(default_factory=list)
    trades: list[Trade] = field(default_factory=list)


@dataclass
class Loan:
    """A borrow or a repay, as /sapi/v1/margin/borrow-repay lists it."""

    tx_id: int
    type: str  # BORROW / REPAY
    asset: str
    amount: float
    principal: float  # of `amount`, what went to the loan itself
    interest: float  # of `amount` (a repay), what paid interest first
    time: int


@dataclass
class InterestCharge:
    """Interest charged on a loan: once on borrowing, then every hour it is open."""

    tx_id: int
    asset: str
    principal: float
    interest: float
    rate: float  # per hour
    type: str  # ON_BORROW / PERIODIC
    time: int


@dataclass
class Liquidation:
    """An order the exchange placed to close a margin account below its liquidation level."""

    order_id: int
    symbol: str
    side: str
    price: float
    qty: float
    time: int


@dataclass
class MarginWallet(Wallet):
    """The cross-margin account: a wallet whose balances may be borrowed."""

    borrowed: dict[str, float] = field(default_factory=dict)
    interest: dict[str, float] = field(default_factory=dict)
    loans: list[Loan] = field(default_factory=list)
    charges: list[InterestCharge] = field(default_factory=list)
    liquidations: list[Liquidation] = field(default_factory=list)
    charged_to: int = 0  # the start (ms) of the last hour interest was charged for


@dataclass
class Account(Wallet):
    """One API key's spot wallet and, once used, its cross-margin wallet."""

    balances: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_BALANCES))
    margin: MarginWallet | None = None


def order_json(order: Order) -> dict[str, Any]:
    """An order as Binance's order endpoints answer it."""
    return {
        "symbol": order.symbol,
        "orderId": order.order_id,
        "orderListId": -1,
        "clientOrderId": order.client_order_id,
        "transactTime": order.update_time,
        "time": order.time,
        "updateTime": order.update_time,
        "price": fmt(order.price),
        "origQty": fmt(order.orig_qty),
        "executedQty": fmt(order.executed_qty),
        "cummulativeQuoteQty": fmt(order.quote_qty),
        "status": order.status,
        "timeInForce": order.time_in_force,
        "type": order.type,
        "side": order.side,
        "workingTime": order.time,
        "isWorking": order.status in ("NEW", "PARTIALLY_FILLED"),
        "selfTradePreventionMode": "NONE",
    }


def trade_json(trade: Trade) -> dict[str, Any]:
    """A trade as Binance's myTrades answers it."""
    return {
        "symbol": trade.symbol,
        "id": trade.id,
        "orderId": trade.order_id,
        "orderListId": -1,
        "price": fmt(trade.price),
        "qty": fmt(trade.qty),
        "quoteQty": fmt(trade.price * trade.qty),
        "commission": fmt(trade.commission),
        "commissionAsset": trade.commission_asset,
        "time": trade.time,
        "isBuyer": trade.is_buyer,
        "isMaker": trade.is_maker,
        "isBestMatch": True,
    }


def fmt(value: float) -> str:
    """A quantity or price as Binance writes it: 8 decimals."""
    return f"{value:.8f}"
