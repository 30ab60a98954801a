"""Airflow-side setup that DAG files must not do at parse time: one pool per exchange.

Run it where Airflow's metadata database is reachable (`python -m pipeline
airflow-pools`, which `make run` calls); it is idempotent.
"""

from __future__ import annotations

from pipeline.settings import Settings
from pipeline.tasks.market_data import exchanges_of, pool_name


def ensure_pools(settings: Settings) -> list[str]:
    """Create or resize the `exchange_<name>` pool of every configured exchange."""
    from airflow.models.pool import Pool

    names = []
    for exchange in exchanges_of(settings):
        name = pool_name(exchange)
        Pool.create_or_update_pool(
            name=name,
            slots=settings.airflow.exchange_pool_slots,
            description=f"concurrent cryptobots tasks against {exchange}",
            include_deferred=False,
        )
        names.append(name)
    return names
