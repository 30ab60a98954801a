"""Backtests for people: a text table of their metrics and a PNG of their equity curves."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pipeline.learn.evaluate.backtest import Backtest

_TABLE_COLUMNS = (  # (metric, header, format); "%" formats a fraction as a percentage
    ("total_return", "total", "%"),
    ("annual_return", "annual", "%"),
    ("sharpe", "sharpe", ".2f"),
    ("sortino", "sortino", ".2f"),
    ("max_drawdown", "max dd", "%"),
    ("calmar", "calmar", ".2f"),
    ("turnover", "turn/yr", ".1f"),
    ("exposure", "exposure", "%"),
    ("trades", "trades", ".0f"),
    ("win_rate", "win rate", "%"),
)


def metrics_table(backtests: Mapping[str, Backtest]) -> str:
    """A fixed-width text table: one row per backtest, the key metrics as columns."""
    header = ["name"] + [title for _, title, _ in _TABLE_COLUMNS]
    rows = [header]
    for key, bt in backtests.items():
        cells = [key]
        for metric, _, fmt in _TABLE_COLUMNS:
            cells.append(_format_cell(bt.metrics[metric], fmt))
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _format_cell(value: float, fmt: str) -> str:
    """Format one metric; huge values (the CAGR of a few hours' gain) in scientific notation."""
    if fmt == "%":
        value *= 100
    text = f"{value:.2e}" if abs(value) >= 1e6 else f"{value:{'.1f' if fmt == '%' else fmt}}"
    return f"{text}%" if fmt == "%" else text


def plot_equity(backtests: Mapping[str, Backtest], path: Path | str, title: str) -> Path:
    """Save the equity curves (x = UTC time) as a PNG; creates parent directories.

    Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend
    switch), imported here so that importing this module stays light.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(10, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for key, bt in backtests.items():
        times = np.asarray(bt.ts, dtype=np.int64).astype("datetime64[ms]")
        ax.plot(times, bt.equity, label=key, linewidth=1.2)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_title(title)
    ax.set_xlabel("time (UTC)")
    ax.set_ylabel("equity (start = 1.0)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    fig.autofmt_xdate()
    fig.savefig(path, format="png")
    return path
