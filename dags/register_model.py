"""
# register_model

Bring a **model trained elsewhere** in as a candidate version: an ONNX file from a
path or any fsspec URL (`s3://...`, `https://...`), trained in a notebook, with
Stable-Baselines3 or PyTorch, or a rule written as an ONNX graph. Manual only: fill
the params form (or `airflow dags trigger register_model --conf '{"source": "s3://bucket/policy.onnx",
"features": "ret_1,ret_24,rsi_14", "action_map": "0,1"}'`).

The same checks and evidence as `python -m pipeline models register`: the ONNX
checker; one input of the declared features (raw, in order) and the position, one
output with a score per action-map position; every feature known; finite scores on
1,000 real observations of the market's stored candles; then the walk-forward evidence
on the nightly's `training.folds` folds ending at the newest candle, its deflated
Sharpe ratio counting it among the trials. A refused model fails the task at once
(no retries) with the reason and the fix, and nothing is stored. A registered one is a
candidate: promote it with the `promote` DAG (its gates, approval before live).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

from pipeline.settings import load_settings

SETTINGS = load_settings()


@dag(
    dag_id="register_model",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1},
    params={
        "source": Param(
            "", type="string", minLength=1, description="the .onnx file: a path or any fsspec URL"
        ),
        "market": Param(
            str(SETTINGS.markets[0]),
            type="string",
            enum=[str(market) for market in SETTINGS.markets],
            description="what it trades",
        ),
        "features": Param(
            ",".join(SETTINGS.training.features),
            type="string",
            description="the features it reads, comma-separated, in its input's order (raw "
            "values: normalization is inside the graph); its last input is the position",
        ),
        "action_map": Param(
            "0,1",
            type="string",
            description="the position each output stands for, comma-separated (0,1 or -1,0,1)",
        ),
        "sizing": Param(
            "none",
            type="string",
            enum=["none", "target"],
            description="none: the action map's positions; target: sized by "
            "training.target_volatility as the learned policies are",
        ),
        "position_rule": Param("argmax", type="string", enum=["argmax", "expected"]),
        "reason": Param(None, type=["null", "string"], description="why (kept in its lineage)"),
    },
    tags=["cryptobots", "models"],
    doc_md=__doc__,
)
def register_model() -> None:
    @task
    def register(**context: object) -> dict:
        from cryptobots_hooks import final_refusals

        from pipeline.models.external import action_positions, feature_names
        from pipeline.tasks.models import register_external

        params: dict = context["params"]  # type: ignore[assignment]
        who = getattr(context["dag_run"], "triggering_user_name", None) or "unknown"
        with final_refusals():
            return register_external(
                load_settings(),
                params["source"],
                params["market"],
                features=feature_names(params["features"]),
                action_map=action_positions(params["action_map"]),
                registered_by=f"{who} (airflow)",
                sizing=params["sizing"],
                position_rule=params["position_rule"],
                reason=params["reason"],
            )

    register()


dag_object = register_model()
