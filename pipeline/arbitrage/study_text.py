"""The study's report as plain text: its settings, its caveats, one block per group."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def render_text(report: Mapping[str, Any]) -> str:
    """The report as plain text: settings, caveats, one block per group."""
    lines = [
        f"Arbitrage study on stored candles ({report['generated_at']})",
        f"threshold {report['threshold_bps']:g} bps after fees; taker fee "
        f"{report['taker_fee_bps']:g} bps per leg; trade size at most {report['max_notional']:g} "
        f"{report['home']} (max_cycle_notional) and {report['volume_share']:.0%} of the smallest "
        "leg's candle volume in quote terms; cross spreads also pay both rebalancing "
        "withdrawals (arbitrage.withdrawals) as bps of max_cycle_notional; no transfer is "
        "ever automated",
        "",
        "CAVEATS",
        *(f"- {c}" for c in report["caveats"]),
        "",
    ]
    header = (
        f"  {'direction / pair':<32}{'p1':>8}{'p50':>8}{'p99':>8}{'max':>8}"
        f"{'>thr':>7}{'share':>8}{'runs':>6}{'longest':>9}{'profit*':>11}"
    )
    for g in report["groups"]:
        window = g["window"]
        span = f"{window['start']} .. {window['end']}" if window else "no stored candles"
        dropped = g["dropped"]
        lines += [
            f"{g['kind']} {g['name']}: {span}",
            f"  {g['slots']:,} slots, {g['observations']:,} observations; dropped "
            f"{dropped['missing']:,} for a missing candle and {dropped['quarantined']:,} for a "
            f"quarantined one; {g['zero_volume']:,} observations with a zero-volume leg "
            "(stale close, size 0)",
            f"  size: {g['size_limit']}; profit in {g['profit_currency']}",
        ]
        if g["plot"]:
            lines.append(f"  plot: {g['plot']}")
        if not g["observations"]:
            lines.append("")
            continue
        lines.append(header)
        for entry in [*g["series"], {**g["best"], "label": "best at each time"}]:
            lines.append(_row(entry, g["timeframe"]))
        for entry in g["series"]:
            if entry.get("inventory"):
                inv = entry["inventory"]
                minutes = entry["rebalance_minutes"]
                observed = entry.get("conversion_observed_share")
                conversion = (
                    ""
                    if observed is None
                    else f"; quote conversion observed at {observed:.0%} of the times"
                )
                lines.append(
                    f"  {entry['label']}: needs {inv['quote']:,.2f} {inv['quote_currency']} on "
                    f"{inv['buy_venue']} and {inv['base']:.6g} {inv['base_currency']} on "
                    f"{inv['sell_venue']}; withdrawals {entry['withdrawal_bps']:.1f} bps; "
                    f"rebalance {'unknown' if minutes is None else f'{minutes:g} min'} (manual)"
                    f"{conversion}"
                )
        lines.append("")
    lines.append(
        "* hypothetical: every candle above the threshold traded once at its size, closes as "
        "prices; see the caveats."
    )
    return "\n".join(lines)


def _row(entry: Mapping[str, Any], timeframe: str) -> str:
    d = entry["distribution"]
    p = d["percentiles"]
    runs_ = entry["runs"]
    return (
        f"  {entry['label'][:31]:<32}{p['p1']:>8.1f}{p['p50']:>8.1f}{p['p99']:>8.1f}"
        f"{d['max']:>8.1f}{entry['above']['count']:>7,}{entry['above']['share']:>8.2%}"
        f"{runs_['count']:>6,}{runs_['max_minutes']:>7g}m {entry['profit']['total']:>10,.2f}"
    )
