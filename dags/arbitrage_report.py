"""
# arbitrage_report

Daily study of the **previous day's** stored candles (the data interval
`[data_interval_start, data_interval_end)`) for every configured triangle and venue
group (`arbitrage.triangles`, `arbitrage.venue_groups`): one mapped task per group
computes the triangle edges after fees in both directions, or the net cross-exchange
spreads of every venue pair after fees and withdrawals, their distribution, the share
above `arbitrage.study_threshold_bps`, how long such edges lasted and the hypothetical
profit at a realistic size. Each writes one row of `arbitrage_reports` (replaced when
the interval is re-run) and a PNG under `<var_dir>/reports/arbitrage/daily/`; the
**Arbitrage** page of the UI lists them with their plots.

Nothing is fetched here: `market_data` stores the candles. Missing or quarantined
candles are dropped, never opportunities. Candle closes are not simultaneous quotes:
the figures are not capturable profit.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, task
from airflow.timetables.interval import CronDataIntervalTimetable

from pipeline.settings import load_settings

SETTINGS = load_settings()
GROUPS = SETTINGS.arbitrage.group_keys()


@dag(
    dag_id="arbitrage_report",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=pendulum.instance(SETTINGS.airflow.start_date),
    catchup=False,
    max_active_runs=2,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    tags=["cryptobots", "arbitrage"],
    doc_md=__doc__,
)
def arbitrage_report() -> None:
    @task
    def study(group: str, **context: object) -> dict:
        from pipeline.tasks.arbitrage import report

        return report(
            load_settings(),
            group,
            int(context["data_interval_start"].timestamp() * 1000),  # type: ignore[attr-defined]
            int(context["data_interval_end"].timestamp() * 1000),  # type: ignore[attr-defined]
        )

    study.expand(group=GROUPS)


dag_object = arbitrage_report()
