"""
# promote

Make a registered model version the **champion** that the trader serves. Manual
only: trigger it from the UI's params form (or `airflow dags trigger promote
--conf '{"version": 3}'`).

**verify** the artifact (checksum, ONNX checker, signature against its feature
spec) -> **evaluate** the candidate and the current champion from their ONNX files
on the same most recent window -> **gate** (export parity; evidence for every
model, the first included: the deflated Sharpe ratio of its walk-forward folds and
its worst fold's drawdown; against a champion also a Sharpe above the champion's by
the configured margin and a drawdown within the limit) -> **promote** (moves the
`champion` alias with an audit row; refused unless the gates pass or `force` is set
with a reason) -> **report**.

`version` 0 picks the candidate the latest training run selected by its
walk-forward score. A promotion that lost a race with another one fails with a conflict and
changes nothing.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

from pipeline.registry import model_name
from pipeline.settings import load_settings

SETTINGS = load_settings()


@dag(
    dag_id="promote",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1},
    params={
        "name": Param(model_name(str(SETTINGS.markets[0])), type="string"),
        "version": Param(
            0, type="integer", minimum=0, description="0 = the last training run's pick"
        ),
        "force": Param(False, type="boolean", description="override failed gates"),
        "reason": Param(
            None, type=["null", "string"], description="why (optional; required with force)"
        ),
    },
    tags=["cryptobots", "models"],
    doc_md=__doc__,
)
def promote() -> None:
    @task
    def verify(**context: object) -> dict:
        import tempfile
        from pathlib import Path

        from pipeline.db.engine import create_engine
        from pipeline.promotion import best_recent_candidate
        from pipeline.registry import load_verified

        params: dict = context["params"]  # type: ignore[assignment]
        engine = create_engine(load_settings().db_url)
        version = params["version"] or best_recent_candidate(engine, params["name"])
        with tempfile.TemporaryDirectory() as folder:
            verified = load_verified(engine, params["name"], version, Path(folder))
        return {"name": params["name"], "version": version, "sha256": verified.sha256}

    @task
    def evaluate(target: dict) -> dict:
        from pipeline.db.engine import create_engine
        from pipeline.promotion import evaluate_pair, evaluation_end

        settings = load_settings()
        engine = create_engine(settings.db_url)
        end = evaluation_end(engine, target["name"], target["version"])
        return {**target, **evaluate_pair(settings, engine, target["name"], target["version"], end)}

    @task
    def gate(pair: dict) -> dict:
        from pipeline.db.engine import create_engine
        from pipeline.promotion import gate_pair

        settings = load_settings()
        engine = create_engine(settings.db_url)
        return {**pair, "verdict": gate_pair(settings, engine, pair["name"], pair["version"], pair)}

    @task
    def apply(gated: dict, **context: object) -> dict:
        from pipeline.db.engine import create_engine
        from pipeline.promotion import apply_promotion

        params: dict = context["params"]  # type: ignore[assignment]
        return apply_promotion(
            create_engine(load_settings().db_url),
            gated["name"],
            gated["version"],
            gated["verdict"],
            gated["generation"],
            who=f"airflow:{context['run_id']}",
            reason=params["reason"] or None,
            force=params["force"],
        )

    @task
    def report(event: dict) -> str:
        forced = " (forced)" if event["forced"] else ""
        return (
            f"{event['name']}: champion v{event['from_version'] or '-'} -> "
            f"v{event['to_version']}{forced}"
        )

    report(apply(gate(evaluate(verify()))))


dag_object = promote()
