"""How Kraken names what the simulator serves: asset ids (XXBT, ZUSD, USDC), their
altnames (XBT, USD), pair ids (XXBTZUSD for the legacy fiat and major pairs, XBTUSDC for
the newer ones) and pair altnames (XBTUSD), mapped to and from the simulator's own market
ids (Binance's BTCUSDC); and its transaction ids (OABCDE-FGHIJ-KLMNOP)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ALT = {"BTC": "XBT", "DOGE": "XDG"}  # Kraken's altname of a currency code
LEGACY = {  # the asset ids Kraken gave its first currencies: X for crypto, Z for fiat
    "BTC": "XXBT",
    "ETH": "XETH",
    "LTC": "XLTC",
    "XRP": "XXRP",
    "XLM": "XXLM",
    "ETC": "XETC",
    "USD": "ZUSD",
    "EUR": "ZEUR",
    "GBP": "ZGBP",
    "JPY": "ZJPY",
    "CAD": "ZCAD",
}


def asset_id(code: str) -> str:
    """Kraken's asset id of a currency code (BTC -> XXBT, USD -> ZUSD, USDC -> USDC)."""
    return LEGACY.get(code, code)


def altname(code: str) -> str:
    """Kraken's altname of a currency code (BTC -> XBT)."""
    return ALT.get(code, code)


def pair_id(base: str, quote: str) -> str:
    """Kraken's pair id: both legacy ids joined (XXBTZUSD) when both currencies have one,
    else the altnames joined (XBTUSDC)."""
    if base in LEGACY and quote in LEGACY:
        return asset_id(base) + asset_id(quote)
    return altname(base) + altname(quote)


def decimals(step: float) -> int:
    """How many decimals a step of `step` is (0.01 -> 2)."""
    return max(0, round(-math.log10(step))) if step < 1 else 0


def txid(number: int, prefix: str = "O") -> str:
    """A Kraken-style transaction id for the simulator's order or trade `number`."""
    digits = f"{number:016d}"
    return f"{prefix}{digits[:5]}-{digits[5:10]}-{digits[10:16]}"


def number_of(txid_text: str) -> int | None:
    """The order or trade number of a `txid` made here; None for any other text."""
    digits = txid_text[1:].replace("-", "")
    return int(digits) if len(txid_text) == 19 and digits.isdigit() else None


@dataclass(frozen=True)
class Pair:
    """One served market under its Kraken names."""

    market_id: str  # the simulator's own (Binance) id, e.g. BTCUSDC
    id: str  # XBTUSDC
    altname: str  # XBTUSDC
    base: str  # currency codes
    quote: str

    @property
    def wsname(self) -> str:
        return f"{altname(self.base)}/{altname(self.quote)}"


class Names:
    """The served markets by Kraken pair id and altname, and by the simulator's id."""

    def __init__(self, markets: Mapping[str, Any]) -> None:
        self.by_market: dict[str, Pair] = {}
        for market_id, feed in markets.items():
            base, quote = feed.recording.base, feed.recording.quote
            self.by_market[market_id] = Pair(
                market_id, pair_id(base, quote), altname(base) + altname(quote), base, quote
            )
        self.by_name = {p.id: p for p in self.by_market.values()}
        self.by_name |= {p.altname: p for p in self.by_market.values()}

    def pair(self, name: str | None) -> Pair | None:
        """The pair a request names (id or altname); None when none is served."""
        return self.by_name.get(name or "")
