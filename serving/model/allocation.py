"""How one exchange account's balances are shared by the markets a live trader trades.

Each traded market keeps a sub-account (its position row: base and quote). On a live
exchange the assets are one pool: two markets quoted in USDT draw on the same USDT.
Giving each the whole balance would let both spend it; so every asset is split among
the markets that use it, and the shares always add up to what the exchange holds.
"""

from __future__ import annotations

from collections.abc import Mapping


def split_balances(
    totals: Mapping[str, float],
    assets: Mapping[str, tuple[str, str]],
    held: Mapping[str, tuple[float, float]],
    signed: bool = False,
) -> dict[str, tuple[float, float]]:
    """Each market's (base, quote) share of the exchange's `totals`.

    `assets` maps a market key to its (base, quote) asset codes, `held` the markets'
    stored (base, quote). An asset is split in the proportions the markets using it
    already hold (so a market keeps what its own trades earned, and a fee or a missed
    fill is spread over them); equally when one of them has no sub-account yet or none
    holds any. `signed` (a margin account, whose net holding of an asset is negative
    while it is shorted): a negative total is split like a positive one, in the
    proportions the markets' stored holdings of the same sign give.
    """
    users: dict[str, list[tuple[str, int]]] = {}
    for key, pair in assets.items():
        for slot, asset in enumerate(pair):
            users.setdefault(asset, []).append((key, slot))
    shares = {key: [0.0, 0.0] for key in assets}
    for asset, using in users.items():
        total = float(totals.get(asset) or 0.0)
        sign = -1.0 if signed and total < 0 else 1.0
        total = max(total * sign, 0.0)
        amounts = [max(held[key][slot] * sign, 0.0) if key in held else None for key, slot in using]
        stored = sum(a for a in amounts if a is not None)
        equal = None in amounts or stored <= 0
        for (key, slot), amount in zip(using, amounts, strict=True):
            if len(using) == 1:
                shares[key][slot] = total
            elif equal or amount is None:
                shares[key][slot] = total / len(using)
            else:
                shares[key][slot] = total * amount / stored
            shares[key][slot] *= sign
    return {key: (base, quote) for key, (base, quote) in shares.items()}
