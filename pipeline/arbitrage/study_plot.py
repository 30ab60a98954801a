"""A studied group's plot: its best edge over time against the threshold and every
series' histogram, as a PNG. matplotlib is imported by the function, never at import.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.arbitrage.study_stats import HISTOGRAM_BINS

if TYPE_CHECKING:
    from pipeline.arbitrage.study_edges import Studied


def plot_group(studied: Studied, threshold_bps: float, path: Path) -> Path:
    """The group's PNG: the best edge over time with the threshold, and every series'
    histogram. matplotlib's object API on the Agg canvas, imported here."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    path.parent.mkdir(parents=True, exist_ok=True)
    result = studied.result
    fig = Figure(figsize=(11, 7.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1)
    unit = "triangle edge" if result["kind"] == "triangle" else "net spread"
    fig.suptitle(
        f"{result['name']}\n{unit} after fees (bps) from candle closes: closes are not "
        "simultaneous quotes, differences are not capturable profit",
        fontsize=10,
    )
    colors = colormaps["tab10" if len(studied.labels) <= 10 else "tab20"].colors
    if studied.ts.size:
        times = studied.ts.astype("datetime64[ms]")
        best = studied.edges.max(axis=0)
        top.plot(times, best, linewidth=0.7, color="tab:blue", label="best at each time")
        locator = AutoDateLocator()
        top.xaxis.set_major_locator(locator)
        top.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        finite = studied.edges[np.isfinite(studied.edges)]
        low, high = np.percentile(finite, [0.5, 99.5])
        high = max(high, threshold_bps)
        bins = np.linspace(low, high + 1e-9, HISTOGRAM_BINS + 1)
        for k, label in enumerate(studied.labels):
            bottom.hist(
                np.clip(studied.edges[k], low, high),
                bins=bins,
                histtype="step",
                label=label,
                color=colors[k % len(colors)],
            )
    else:
        top.text(0.5, 0.5, "no observations", ha="center", va="center", transform=top.transAxes)
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
    top.axhline(threshold_bps, color="tab:red", linewidth=0.8, linestyle="--", label="threshold")
    top.axhline(0.0, color="grey", linewidth=0.6)
    top.set_ylabel("bps")
    top.set_xlabel("candle open (UTC)")
    top.legend(loc="lower left", fontsize=8)
    bottom.axvline(threshold_bps, color="tab:red", linewidth=0.8, linestyle="--")
    bottom.set_xlabel("bps (0.5-99.5 percentile range; the tails are piled at its ends)")
    bottom.set_ylabel("observations")
    if studied.labels and studied.ts.size:
        bottom.legend(loc="upper left", fontsize=7, ncol=2 if len(studied.labels) > 4 else 1)
    fig.savefig(path, format="png")
    return path
