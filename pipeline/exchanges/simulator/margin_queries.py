"""What Binance's cross-margin endpoints answer: the margin account, loans, interest,
rates, liquidations and what more may be borrowed."""

from __future__ import annotations

from typing import Any

from pipeline.exchanges.simulator.errors import BinanceError
from pipeline.exchanges.simulator.margin import NO_LEVEL, Prices, totals
from pipeline.exchanges.simulator.records import MarginTerms, MarginWallet, fmt


def account_json(wallet: MarginWallet, prices: Prices, terms: MarginTerms) -> dict[str, Any]:
    """GET /sapi/v1/margin/account: every margin asset (those with a price) with what is
    held and borrowed, and the margin level."""
    assets, owed = totals(wallet, prices)
    btc = prices.get("BTC") or 1.0  # Binance totals in BTC; an exchange without it: in quote
    names = sorted(set(prices) | set(wallet.balances) | set(wallet.locked) | set(wallet.borrowed))
    return {
        "borrowEnabled": True,
        "marginLevel": fmt(NO_LEVEL if owed <= 0 else assets / owed),
        "totalAssetOfBtc": fmt(assets / btc),
        "totalLiabilityOfBtc": fmt(owed / btc),
        "totalNetAssetOfBtc": fmt((assets - owed) / btc),
        "totalCollateralValueInUSDT": fmt(assets) if terms.quote == "USDT" else "0",
        "tradeEnabled": True,
        "transferInEnabled": True,
        "transferOutEnabled": True,
        "accountType": "MARGIN_1",
        "userAssets": [_asset_json(wallet, name) for name in names],
    }


def _asset_json(wallet: MarginWallet, asset: str) -> dict[str, str]:
    free, locked = wallet.balances.get(asset, 0.0), wallet.locked.get(asset, 0.0)
    borrowed, interest = wallet.borrowed.get(asset, 0.0), wallet.interest.get(asset, 0.0)
    return {
        "asset": asset,
        "borrowed": fmt(borrowed),
        "free": fmt(max(free, 0.0)),
        "interest": fmt(interest),
        "locked": fmt(max(locked, 0.0)),
        "netAsset": fmt(free + locked - borrowed - interest),
    }


def loans_json(wallet: MarginWallet, params: dict[str, str]) -> dict[str, Any]:
    """GET /sapi/v1/margin/borrow-repay: the borrows or repays (`type`), newest first."""
    kind = params.get("type", "")
    if kind not in ("BORROW", "REPAY"):
        raise BinanceError(400, -1102, "Mandatory parameter 'type' was not sent.")
    start, end, tx_id = _int(params, "startTime"), _int(params, "endTime"), _int(params, "txId")
    rows = [
        {
            "type": loan.type,
            "isolatedSymbol": "",
            "amount": fmt(loan.amount),
            "asset": loan.asset,
            "interest": fmt(loan.interest),
            "principal": fmt(loan.principal),
            "status": "CONFIRMED",
            "timestamp": loan.time,
            "txId": loan.tx_id,
        }
        for loan in reversed(wallet.loans)
        if loan.type == kind
        and params.get("asset") in (None, "", loan.asset)
        and (tx_id is None or loan.tx_id == tx_id)
        and (start is None or loan.time >= start)
        and (end is None or loan.time <= end)
    ]
    return {"rows": rows[: _int(params, "size") or 10], "total": len(rows)}


def interest_json(wallet: MarginWallet, params: dict[str, str]) -> dict[str, Any]:
    """GET /sapi/v1/margin/interestHistory: interest charged, newest first."""
    start, end = _int(params, "startTime"), _int(params, "endTime")
    rows = [
        {
            "txId": charge.tx_id,
            "interestAccuredTime": charge.time,
            "asset": charge.asset,
            "rawAsset": charge.asset,
            "principal": fmt(charge.principal),
            "interest": fmt(charge.interest),
            "interestRate": fmt(charge.rate),
            "type": charge.type,
        }
        for charge in reversed(wallet.charges)
        if params.get("asset") in (None, "", charge.asset)
        and (start is None or charge.time >= start)
        and (end is None or charge.time <= end)
    ]
    return {"rows": rows[: _int(params, "size") or 10], "total": len(rows)}


def rates_json(asset: str, terms: MarginTerms, now: int) -> list[dict[str, Any]]:
    """GET /sapi/v1/margin/interestRateHistory: the asset's daily rate (one, unchanging)."""
    return [{"asset": asset, "timestamp": now, "dailyInterestRate": fmt(terms.daily_rate),
             "vipLevel": 0}]  # fmt: skip


def liquidations_json(wallet: MarginWallet) -> dict[str, Any]:
    """GET /sapi/v1/margin/forceLiquidationRec: the orders liquidations placed."""
    rows = [
        {
            "avgPrice": fmt(row.price),
            "executedQty": fmt(row.qty),
            "orderId": row.order_id,
            "price": fmt(row.price),
            "qty": fmt(row.qty),
            "side": row.side,
            "symbol": row.symbol,
            "timeInForce": "IOC",
            "isIsolated": False,
            "updatedTime": row.time,
        }
        for row in reversed(wallet.liquidations)
    ]
    return {"rows": rows, "total": len(rows)}


def _int(params: dict[str, str], name: str) -> int | None:
    value = params.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)  # type: ignore[arg-type]
    except ValueError:
        raise BinanceError(400, -1100, f"Illegal characters found in parameter '{name}'.") from None
