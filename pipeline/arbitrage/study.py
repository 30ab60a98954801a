"""Running the arbitrage study: how often, how large and for how long an edge showed in stored
candles.

For every configured triangle (three markets of one exchange) and venue group (one asset
on several exchanges) over a window of candles stored in `ohlcv`:

1. Align the legs on common open times. A slot where any leg has no stored candle, or a
   quarantined one (a candle that failed validation, or a conflicting print of it that
   validation set aside), is no observation: it never yields an opportunity, it is
   counted as dropped.
2. Per observation, the triangle's edge after three taker fees in both directions
   (`graph.py`'s cycles, weighed with every close as both bid and ask), or the net spread
   of every ordered venue pair after both taker fees and both rebalancing withdrawals
   (`cross.py`), with the quote conversion observed at that time where one venue quotes
   the asset in both quotes, else the configured rate.
3. Statistics per direction or pair, and for the best of them at each time: distribution
   (percentiles, histogram), the share above the threshold, how long edges above it
   lasted (runs of consecutive candles), and the profit they would have made at a
   realistic size: at most `max_cycle_notional`, and at most `VOLUME_SHARE` of the
   smallest leg's candle volume in quote terms.

Candle closes are not simultaneous quotes: the figures bound what the recorded prices
allowed, they are not capturable profit; `CAVEATS` say so in every report.

This module runs the steps and holds none of them: `study_group` loads a group's candles
(`study_candles`), computes its figures (`study_stats`, `study_edges`) and draws its plot
(`study_plot`); `study_windows` studies every configured group (`study_config`) over what is
stored; `run_study`, the `arbitrage study` command, first fills the windows from the
recorded files through the exchange simulator (`study_ingest`), then writes report.json and
report.txt (`study_text`). numpy at import; SQLAlchemy, matplotlib and the ingest machinery
inside the functions that use them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.arbitrage.study_candles import load_series, observed_closes, stored_window
from pipeline.arbitrage.study_config import CAVEATS, Group, StudyConfig, configured_groups
from pipeline.arbitrage.study_edges import conversion_rates, study_cross, study_triangle
from pipeline.arbitrage.study_ingest import ingest_recorded, recorded_window
from pipeline.arbitrage.study_plot import plot_group
from pipeline.arbitrage.study_stats import align
from pipeline.arbitrage.study_text import render_text
from pipeline.timeutil import iso

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from pipeline.settings import Settings


def study_group(
    engine: Engine,
    group: Group,
    window: tuple[int, int] | None,
    config: StudyConfig,
    plot_path: Path | None = None,
) -> dict[str, Any]:
    """Study one group over the stored candles of `window` ([start, end) ms); with
    `plot_path`, also draw its PNG there. A plain dict (JSON-ready)."""
    tf = group.markets[0].timeframe_ms
    start, end = window or (0, 0)
    series = [load_series(engine, m, start, end) for m in group.markets]
    aligned = align(series, [str(m) for m in group.markets], start, end, tf)
    if group.kind == "triangle":
        studied = study_triangle(group, aligned, config)
    else:
        closes = observed_closes(engine, group, aligned.ts, start, end)
        conversions = conversion_rates(group, closes, aligned.ts.size)
        studied = study_cross(group, aligned, config, conversions)
    result = studied.result
    result["window"] = (
        {"start": iso(start), "end": iso(end), "start_ms": start, "end_ms": end} if window else None
    )
    result["plot"] = None
    if plot_path is not None:
        result["plot"] = str(plot_group(studied, config.threshold_bps, plot_path))
    return result


def study_windows(
    engine: Engine,
    groups: Sequence[Group],
    windows: Mapping[str, tuple[int, int] | None],
    config: StudyConfig,
    plot_dir: Path | None = None,
) -> dict[str, Any]:
    """Study every group over its window (keyed by slug); PNGs under `plot_dir`."""
    results = [
        study_group(
            engine,
            group,
            windows.get(group.slug),
            config,
            None if plot_dir is None else plot_dir / f"{group.slug}.png",
        )
        for group in groups
    ]
    return {
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "threshold_bps": config.threshold_bps,
        "taker_fee_bps": config.taker_fee_bps,
        "max_notional": config.max_notional,
        "home": config.home,
        "volume_share": config.volume_share,
        "caveats": list(CAVEATS),
        "groups": results,
    }


def run_study(
    settings: Settings,
    engine: Engine,
    out_dir: Path,
    *,
    days: int | None = None,
    threshold_bps: float | None = None,
    ingest: bool = True,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The `arbitrage study` command: windows, optional ingest, study, report files.

    Windows are the last `days` (default `study_days`) of each group's common range: in the
    recorded files when ingesting, else in what is stored. Writes the PNGs, report.json and
    report.txt under `out_dir`; returns the report.
    """
    import json

    arbitrage = settings.arbitrage
    days = days or arbitrage.study_days
    config = StudyConfig.from_settings(arbitrage, threshold_bps)
    groups = configured_groups(arbitrage)
    if ingest:
        windows = {
            g.slug: recorded_window(settings.data_dir, g, days) if settings.data_dir else None
            for g in groups
        }
        report_ingest = ingest_recorded(settings, engine, groups, windows, progress)
    else:
        windows = {g.slug: stored_window(engine, g, days) for g in groups}
        report_ingest = []
    report = study_windows(engine, groups, windows, config, out_dir)
    report["days"] = days
    report["ingested"] = report_ingest
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    (out_dir / "report.txt").write_text(render_text(report) + "\n")
    return report
