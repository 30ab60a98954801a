"""The `arbitrage_report` DAG's task without Airflow: study one group's stored candles over
one data interval and keep the result as a row of `arbitrage_reports`, its plot in the
artifact store (drawn in this worker's scratch space, then stored by content hash), so
the Arbitrage page serves it from any host.

Nothing is ingested here: the `market_data` DAG stores the candles. A re-run of an
interval replaces its row (upsert on kind, group and interval start).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.arbitrage.study import study_group
from pipeline.arbitrage.study_config import CAVEATS, Group, StudyConfig, configured_groups

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from pipeline.settings import ArbitrageSettings, Settings


def group_of(arbitrage: ArbitrageSettings, key: str) -> Group:
    """The group a key names; KeyError naming the configured keys when there is none."""
    groups = dict(zip(arbitrage.group_keys(), configured_groups(arbitrage), strict=True))
    if key not in groups:
        raise KeyError(f"no arbitrage group {key!r}; configured: {sorted(groups)}")
    return groups[key]


def report_interval(settings: Settings, key: str, start_ms: int, end_ms: int) -> dict[str, Any]:
    """Study group `key` over the stored candles of [start_ms, end_ms), save the row and the
    PNG; a small summary (row id, observations, share above the threshold, plot URI)."""
    from pipeline.db.engine import create_engine
    from pipeline.models.registry import store_artifact

    group = group_of(settings.arbitrage, key)
    config = StudyConfig.from_settings(settings.arbitrage)
    folder = f"{_stamp(start_ms)}-{_stamp(end_ms)}"
    plot = settings.var_dir / "reports" / "arbitrage" / "daily" / folder / f"{group.slug}.png"
    engine = create_engine(settings.db_url)
    try:
        stats = study_group(engine, group, (start_ms, end_ms), config, plot)
        stats |= {
            "threshold_bps": config.threshold_bps,
            "taker_fee_bps": config.taker_fee_bps,
            "caveats": list(CAVEATS),
        }
        stored, _, _ = store_artifact(settings.artifact_root, plot, kind="plots", suffix=".png")
        stats["plot"] = stored
        row = save_report(engine, group, start_ms, end_ms, stats, stored)
    finally:
        engine.dispose()
    return {
        "id": row,
        "group": group.name,
        "observations": stats["observations"],
        "dropped": stats["dropped"]["missing"] + stats["dropped"]["quarantined"],
        "share_above": stats["best"]["above"]["share"],
        "plot": stored,
    }


def save_report(
    engine: Engine,
    group: Group,
    start_ms: int,
    end_ms: int,
    stats: dict[str, Any],
    plot: str | Path | None,
) -> int:
    """Upsert the group's row for the interval starting at `start_ms`; its id. `plot` is
    where its PNG is: an artifact store URI (any fsspec URL) or a local path."""
    import sqlalchemy as sa

    from pipeline.db.schema import arbitrage_reports

    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    values = {
        "kind": group.kind,
        "group_name": group.name,
        "interval_start": _datetime(start_ms),
        "interval_end": _datetime(end_ms),
        "stats": stats,
        "plot_path": None if plot is None else str(plot),
    }
    statement = insert(arbitrage_reports).values(**values)
    statement = statement.on_conflict_do_update(
        index_elements=["kind", "group_name", "interval_start"],
        set_={
            "interval_end": statement.excluded.interval_end,
            "stats": statement.excluded.stats,
            "plot_path": statement.excluded.plot_path,
            "created_at": sa.func.now(),
        },
    )
    with engine.begin() as conn:
        conn.execute(statement)
        return int(
            conn.execute(
                sa.select(arbitrage_reports.c.id).where(
                    arbitrage_reports.c.kind == group.kind,
                    arbitrage_reports.c.group_name == group.name,
                    arbitrage_reports.c.interval_start == values["interval_start"],
                )
            ).scalar_one()
        )


def latest_reports(engine: Engine, limit: int = 50) -> list[dict[str, Any]]:
    """The newest report rows (by interval, then group), as plain dicts."""
    import sqlalchemy as sa

    from pipeline.db.schema import arbitrage_reports as t

    query = (
        sa.select(t)
        .order_by(t.c.interval_start.desc(), t.c.kind.desc(), t.c.group_name)
        .limit(limit)
    )
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def plot_bytes(engine: Engine, report_id: int) -> bytes | None:
    """Report `report_id`'s PNG read from wherever it is stored, None when the row has
    none or the file is gone."""
    import fsspec
    import sqlalchemy as sa

    from pipeline.db.schema import arbitrage_reports as t

    with engine.connect() as conn:
        uri = conn.execute(sa.select(t.c.plot_path).where(t.c.id == report_id)).scalar()
    if not uri:
        return None
    try:
        with fsspec.open(uri, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _stamp(ms: int) -> str:
    return _datetime(ms).strftime("%Y%m%dT%H%MZ")
