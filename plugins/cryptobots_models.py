"""The Models and Arbitrage pages inside the Airflow UI (Airflow 3.1+ plugin).

Mounts `pipeline.ui.models_page` under `/cryptobots-models` and `pipeline.arbitrage.page`
under `/cryptobots-arbitrage`, and adds a "Models" and an "Arbitrage" entry to the UI's
navigation that frame them. Every route is guarded by Airflow's own auth: the signed-in
user must be allowed to read the `promote` DAG (Models) or the `arbitrage_report` DAG
(Arbitrage). The data comes from `pipeline/models/registry/` and `pipeline/arbitrage/report.py`;
nothing here but wiring.
"""

from __future__ import annotations

from functools import cache
from typing import Any, ClassVar

from airflow.api_fastapi.core_api.security import requires_access_dag
from airflow.plugins_manager import AirflowPlugin
from sqlalchemy.engine import Engine

from pipeline.arbitrage.page import REPORT_DAG_ID
from pipeline.arbitrage.page import create_app as create_arbitrage_app
from pipeline.ui.models_page import PROMOTE_DAG_ID, create_app

URL_PREFIX = "/cryptobots-models"
ARBITRAGE_URL_PREFIX = "/cryptobots-arbitrage"


@cache
def registry_engine() -> Engine:
    """The registry's engine, from the cryptobots settings, made on first use."""
    from pipeline.db.engine import create_engine
    from pipeline.settings import load_settings

    return create_engine(load_settings().db_url)


class CryptobotsModelsPlugin(AirflowPlugin):
    """Registered model versions, the champion and a Promote button; arbitrage reports."""

    name = "cryptobots_models"
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [
        {
            "name": "cryptobots models",
            "url_prefix": URL_PREFIX,
            "app": create_app(
                registry_engine,
                guard=requires_access_dag("GET", param_dag_id=PROMOTE_DAG_ID),
            ),
        },
        {
            "name": "cryptobots arbitrage",
            "url_prefix": ARBITRAGE_URL_PREFIX,
            "app": create_arbitrage_app(
                registry_engine,
                guard=requires_access_dag("GET", param_dag_id=REPORT_DAG_ID),
            ),
        },
    ]
    external_views: ClassVar[list[dict[str, Any]]] = [
        {
            "name": "Models",
            "href": f"{URL_PREFIX.lstrip('/')}/",
            "destination": "nav",
            "url_route": "models",
            # two or more nav views are folded into a "Plugins" menu unless top level
            "nav_top_level": True,
        },
        {
            "name": "Arbitrage",
            "href": f"{ARBITRAGE_URL_PREFIX.lstrip('/')}/",
            "destination": "nav",
            "url_route": "arbitrage",
            "nav_top_level": True,
        },
    ]
