"""The simulator's cross-margin accounts, the way Binance runs them (Cross Margin Classic).

Funds move in from the spot wallet (`transfer`); a borrow credits the asset and opens a
loan that is charged interest at once and at every hour of the market clock after it; a
repay pays that interest first, then the loan. Margin orders trade the margin wallet's
balances (`Matching.create_order` with `wallet="margin"`). Assets are valued in the terms'
quote asset at the books' mids; the margin level is their value over what is owed. Each
margin request first charges the interest due and, when the level is at or below the
terms' liquidation level, liquidates: open margin orders cancelled, every asset traded
back to what its loan needs at market, the loans repaid, a fee charged. Liquidation is
checked when the account is next used, not between requests (the simulator is lazy
everywhere: resting orders too are matched when their owner calls).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from pipeline.exchanges.simulator.errors import BinanceError
from pipeline.exchanges.simulator.matching import Matching
from pipeline.exchanges.simulator.records import (
    TAKER_FEE,
    InterestCharge,
    Liquidation,
    Loan,
    MarginTerms,
    MarginWallet,
    Order,
)

HOUR_MS = 3_600_000
NO_LEVEL = 999.0  # Binance's margin level when nothing is owed

Prices = dict[str, float]  # asset -> value of one unit in the terms' quote asset
Books = Callable[[Any], tuple[list[list[str]], list[list[str]]]]


class Margin(Matching):
    """Transfers, loans, interest, the margin level and liquidation of every key's
    cross-margin wallet."""

    @property
    def terms(self) -> MarginTerms:
        if self.margin_terms is None:
            raise BinanceError(400, -3003, "Margin account does not exist.")
        return self.margin_terms

    def settle(self, api_key: str, now: int, markets: dict[str, Any], books: Books) -> None:
        """Charge the interest due up to `now`, then liquidate if the level calls for it."""
        with self.lock:
            wallet = self.margin_wallet(api_key)
            changed = self._charge_interest(wallet, now)
            prices = valuation(markets, now, self.terms.quote)
            if self.level(wallet, prices) <= self.terms.liquidation_level:
                self._liquidate(wallet, now, markets, books)
                changed = True
            if changed:
                self._save()

    def level(self, wallet: MarginWallet, prices: Prices) -> float:
        """Total asset value over total owed (NO_LEVEL when nothing is owed)."""
        assets, owed = totals(wallet, prices)
        return NO_LEVEL if owed <= 0 else assets / owed

    def transfer(self, api_key: str, params: dict[str, str], now: int, prices: Prices) -> dict:
        """Binance's universal transfer between the spot (MAIN) and cross-margin wallets."""
        kind = params.get("type", "")
        if kind not in ("MAIN_MARGIN", "MARGIN_MAIN"):
            raise BinanceError(400, -1102, f"Transfer type {kind!r} is not simulated.")
        asset, amount = params.get("asset", ""), amount_of(params)
        with self.lock:
            spot, margin = self.account(api_key), self.margin_wallet(api_key)
            source, target = (spot, margin) if kind == "MAIN_MARGIN" else (margin, spot)
            if source.balances.get(asset, 0.0) + 1e-12 < amount:
                raise BinanceError(400, -3041, "Balance is not enough")
            source.balances[asset] = source.balances.get(asset, 0.0) - amount
            target.balances[asset] = target.balances.get(asset, 0.0) + amount
            if kind == "MARGIN_MAIN" and not self._within_leverage(margin, prices):
                margin.balances[asset] += amount
                spot.balances[asset] -= amount
                raise BinanceError(400, -3020, "Transfer out amount exceeds max amount.")
            self.next_id += 1
            self._save()
            return {"tranId": self.next_id - 1}

    def borrow(
        self, api_key: str, asset: str, amount: float, now: int, prices: Prices
    ) -> dict[str, int]:
        """Lend `asset` to the margin wallet, charging the first hour's interest at once."""
        with self.lock:
            wallet = self.margin_wallet(api_key)
            if asset not in prices:
                raise BinanceError(400, -3027, "Not a valid margin asset.")
            if amount > self.max_borrowable(wallet, asset, prices) + 1e-12:
                raise BinanceError(
                    400, -3006, "Your borrow amount has exceed maximum borrow amount."
                )
            if not any(wallet.borrowed.values()):
                wallet.charged_to = now // HOUR_MS * HOUR_MS
            wallet.balances[asset] = wallet.balances.get(asset, 0.0) + amount
            wallet.borrowed[asset] = wallet.borrowed.get(asset, 0.0) + amount
            tx_id = self._new_id()
            wallet.loans.append(Loan(tx_id, "BORROW", asset, amount, amount, 0.0, now))
            self._charge(wallet, asset, amount, "ON_BORROW", now)
            self._save()
            return {"tranId": tx_id}

    def repay(self, api_key: str, asset: str, amount: float, now: int) -> dict[str, int]:
        """Pay back `amount` of `asset`: its interest first, then the loan."""
        with self.lock:
            wallet = self.margin_wallet(api_key)
            owed_interest = wallet.interest.get(asset, 0.0)
            owed = wallet.borrowed.get(asset, 0.0) + owed_interest
            if amount > owed + 1e-12:
                raise BinanceError(400, -3015, "Repay amount exceeds borrow amount.")
            if wallet.balances.get(asset, 0.0) + 1e-12 < amount:
                raise BinanceError(400, -3041, "Balance is not enough")
            tx_id = self._pay(wallet, asset, amount, now)
            self._save()
            return {"tranId": tx_id}

    def auto_repay(self, api_key: str, placed: dict[str, Any], now: int) -> None:
        """Binance's AUTO_REPAY: what a margin order received repays that asset's loan."""
        with self.lock:
            wallet = self.margin_wallet(api_key)
            received: dict[str, float] = {}
            for trade in wallet.trades:
                if trade.order_id == placed["orderId"]:
                    gross = trade.qty if trade.is_buyer else trade.qty * trade.price
                    asset = trade.commission_asset
                    received[asset] = received.get(asset, 0.0) + gross - trade.commission
            for asset, amount in received.items():
                owed = wallet.borrowed.get(asset, 0.0) + wallet.interest.get(asset, 0.0)
                paid = min(amount, owed, max(wallet.balances.get(asset, 0.0), 0.0))
                if paid > 0:
                    self._pay(wallet, asset, paid, now)
            self._save()

    def max_borrowable(self, wallet: MarginWallet, asset: str, prices: Prices) -> float:
        """What more of `asset` can be borrowed before what is owed passes
        (max_leverage - 1) x the net asset value."""
        if prices.get(asset, 0.0) <= 0:
            return 0.0
        assets, owed = totals(wallet, prices)
        room = (self.terms.max_leverage - 1) * (assets - owed) - owed
        return max(room, 0.0) / prices[asset]

    def _within_leverage(self, wallet: MarginWallet, prices: Prices) -> bool:
        assets, owed = totals(wallet, prices)
        return owed <= (self.terms.max_leverage - 1) * (assets - owed) + 1e-9

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def _pay(self, wallet: MarginWallet, asset: str, amount: float, now: int) -> int:
        interest = min(amount, wallet.interest.get(asset, 0.0))
        principal = amount - interest
        wallet.interest[asset] = wallet.interest.get(asset, 0.0) - interest
        wallet.borrowed[asset] = max(wallet.borrowed.get(asset, 0.0) - principal, 0.0)
        wallet.balances[asset] = wallet.balances.get(asset, 0.0) - amount
        tx_id = self._new_id()
        wallet.loans.append(Loan(tx_id, "REPAY", asset, amount, principal, interest, now))
        return tx_id

    def _charge(
        self, wallet: MarginWallet, asset: str, principal: float, kind: str, at: int
    ) -> None:
        rate = self.terms.hourly_rate
        interest = round(principal * rate, 8)  # Binance's unit: what its history shows
        wallet.interest[asset] = wallet.interest.get(asset, 0.0) + interest
        wallet.charges.append(
            InterestCharge(self._new_id(), asset, principal, interest, rate, kind, at)
        )

    def _charge_interest(self, wallet: MarginWallet, now: int) -> bool:
        """Charge every hour that began since the last charge; whether any was due."""
        hour = now // HOUR_MS * HOUR_MS
        loans = {asset: amount for asset, amount in wallet.borrowed.items() if amount > 0}
        if not loans:
            wallet.charged_to = max(wallet.charged_to, hour)
            return False
        if hour <= wallet.charged_to:
            return False
        for start in range(wallet.charged_to + HOUR_MS, hour + 1, HOUR_MS):
            for asset, amount in sorted(loans.items()):
                self._charge(wallet, asset, amount, "PERIODIC", start)
        wallet.charged_to = hour
        return True

    def _liquidate(
        self, wallet: MarginWallet, now: int, markets: dict[str, Any], books: Books
    ) -> None:
        """Close the account: cancel its orders, trade each asset against the quote to what
        its loan needs, repay every loan it can, and charge the liquidation fee."""
        quote = self.terms.quote
        for order in wallet.orders:
            if order.status in ("NEW", "PARTIALLY_FILLED"):
                self._lock_rest(wallet, order, markets[order.symbol], sign=-1.0)
                order.status, order.update_time = "CANCELED", now
        traded = 0.0
        for asset in sorted(set(wallet.balances) | set(wallet.borrowed) - {quote}):
            feed = markets.get(f"{asset}{quote}")
            if feed is not None:
                traded += self._close(wallet, asset, feed, books(feed), now)
        for asset in sorted(wallet.borrowed):
            owed = wallet.borrowed.get(asset, 0.0) + wallet.interest.get(asset, 0.0)
            paid = min(owed, max(wallet.balances.get(asset, 0.0), 0.0))
            if paid > 0:
                self._pay(wallet, asset, paid, now)
        fee = min(traded * self.terms.liquidation_fee, max(wallet.balances.get(quote, 0.0), 0))
        wallet.balances[quote] = wallet.balances.get(quote, 0.0) - fee

    def _close(
        self,
        wallet: MarginWallet,
        asset: str,
        feed: Any,
        book: tuple[list[list[str]], list[list[str]]],
        now: int,
    ) -> float:
        """Buy what `asset`'s loan lacks, or sell what it does not need, at market; the
        quote value traded."""
        owed = wallet.borrowed.get(asset, 0.0) + wallet.interest.get(asset, 0.0)
        gap = wallet.balances.get(asset, 0.0) - owed
        step = feed.filters["step"]
        if gap < 0:
            side, qty = "BUY", math.ceil(-gap / (1 - TAKER_FEE) / step - 1e-9) * step
        else:
            side, qty = "SELL", math.floor(gap / step + 1e-9) * step
        if qty < feed.filters["min_qty"]:
            return 0.0
        order_id = self._new_id()
        order = Order(
            symbol=feed.recording.market_id,
            order_id=order_id,
            client_order_id=f"autoclose-{order_id}",
            side=side,
            type="MARKET",
            price=0.0,
            orig_qty=qty,
            time=now,
            update_time=now,
        )
        bids, asks = book
        levels = [(float(p), float(q)) for p, q in (asks if side == "BUY" else bids)]
        self._fill_levels(wallet, order, feed, levels, TAKER_FEE, now)
        filled = order.executed_qty >= order.orig_qty - 1e-15
        order.status = "FILLED" if filled else "EXPIRED"
        wallet.orders.append(order)
        if order.executed_qty > 0:
            price = order.quote_qty / order.executed_qty
            wallet.liquidations.append(
                Liquidation(order.order_id, order.symbol, side, price, order.executed_qty, now)
            )
        return order.quote_qty


def valuation(markets: dict[str, Any], now: int, quote: str) -> Prices:
    """Each asset's value in `quote`: the mid of its `quote` market, else of a market
    against an asset that has one (ETH through ETH/BTC and BTC/USDT)."""
    prices = {quote: 1.0}
    feeds = list(markets.values())
    for _ in range(2):
        for feed in feeds:
            base, counter = feed.recording.base, feed.recording.quote
            if base not in prices and counter in prices:
                prices[base] = feed.mid(now) * prices[counter]
    return prices


def totals(wallet: MarginWallet, prices: Prices) -> tuple[float, float]:
    """The wallet's asset value (free and locked) and what it owes, in the quote asset."""
    held = {a: wallet.balances.get(a, 0.0) + wallet.locked.get(a, 0.0) for a in prices}
    owed = {a: wallet.borrowed.get(a, 0.0) + wallet.interest.get(a, 0.0) for a in prices}
    return (
        sum(max(amount, 0.0) * prices[a] for a, amount in held.items()),
        sum(amount * prices[a] for a, amount in owed.items()),
    )


def amount_of(params: dict[str, str]) -> float:
    """The positive `amount` of a borrow, repay or transfer; BinanceError otherwise."""
    try:
        amount = float(params["amount"])
    except (KeyError, ValueError):
        raise BinanceError(400, -1102, "Mandatory parameter 'amount' was not sent.") from None
    if not (amount > 0 and math.isfinite(amount)):
        raise BinanceError(400, -1013, "Invalid amount.")
    return amount
