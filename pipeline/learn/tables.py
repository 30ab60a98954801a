"""Results as plain text: a policy's verdict against its baselines, fixed-width tables."""

from __future__ import annotations

from collections.abc import Mapping


def verdict(metrics: Mapping[str, float], baselines: Mapping[str, Mapping[str, float]]) -> str:
    """'wins' when the policy's Sharpe beats every baseline's and its drawdown is no deeper
    than buy-and-hold's; otherwise what it lost to."""
    lost = [name for name, b in baselines.items() if metrics["sharpe"] <= b["sharpe"]]
    if "buy_and_hold" in baselines and (
        metrics["max_drawdown"] > baselines["buy_and_hold"]["max_drawdown"]
    ):
        lost.append("drawdown")
    return "wins" if not lost else "loses to " + ", ".join(lost)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned fixed-width columns."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("-" * len(lines[0]))
    lines += [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join(lines)
