"""The `arbitrage_report` DAG's task and the `arbitrage study` and `arbitrage scan`
commands. Light at import: numpy and the study come in with the call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.errors import ConfigurationError
from pipeline.settings import Settings


def report(settings: Settings, group: str, start_ms: int, end_ms: int) -> dict[str, Any]:
    """Study group `group` (a key of `settings.arbitrage.group_keys()`) over the stored
    candles of [start_ms, end_ms): its report row and plot, summarized."""
    from pipeline.arbitrage.report import report_interval

    return report_interval(settings, group, start_ms, end_ms)


def study(
    settings: Settings,
    out: Path,
    *,
    days: int | None = None,
    threshold_bps: float | None = None,
    ingest: bool = True,
) -> dict[str, Any]:
    """The study of every configured group over its last `days`, files under `out`."""
    from pipeline.arbitrage.study import run_study
    from pipeline.db.engine import opened
    from pipeline.db.migrate import upgrade

    with opened(settings.db_url) as engine:
        upgrade(engine)
        return run_study(
            settings, engine, out, days=days, threshold_bps=threshold_bps, ingest=ingest
        )


def scan(settings: Settings, min_spread_bps: float | None = None) -> dict[str, Any]:
    """Cross-exchange spreads on the venues' live books (nothing sent); a
    ConfigurationError naming the fix when no venue group could be compared."""
    from pipeline.arbitrage.scan import scan as scan_books

    found = scan_books(settings, min_spread_bps=min_spread_bps)
    if not any(group["scanned"] for group in found["groups"]):
        reasons = "; ".join(r for group in found["groups"] for r in group["skipped"])
        raise ConfigurationError(
            "nothing was scanned: no venue group had two venues that could be read"
            + (f" ({reasons})" if reasons else "")
            + ". Configure two or more of a group's exchanges (CRYPTOBOTS_EXCHANGES__NAME__URL"
            "=...) or list the venues you have in arbitrage.venue_groups "
            "(CRYPTOBOTS_ARBITRAGE__VENUE_GROUPS)"
        )
    return found
