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
the configured margin and a drawdown within the limit) -> **ask** whether a person
must approve: always when trading live, with `promotion.require_approval` or this
run's `approval` param, and only for a promotion that would go ahead -> **approve**
(Browse > Required Actions: the gates, the walk-forward folds with PSR/DSR, the
promotion window and the equity plot; no answer within
`promotion.approval_timeout_hours` is a rejection) -> **apply** (moves the `champion`
alias with an audit row; refused unless the gates pass or `force` is set with a
reason) -> **report** (a rejection is audited here and the champion stays).

`version` 0 picks the candidate the latest training run selected by its
walk-forward score. A promotion that lost a race with another one fails with a conflict and
changes nothing.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, dag, task

from pipeline.models.registry import model_name
from pipeline.settings import load_settings

SETTINGS = load_settings()
PLOTS = "/cryptobots-models/plots"


class AnsweredApproval(ApprovalOperator):
    """ApprovalOperator that keeps the answer (XCom key `answer`) even on a rejection,
    where the operator skips `apply` before its own result is stored."""

    def execute_complete(self, context: dict, event: dict) -> object:
        if "error" not in event:
            context["ti"].xcom_push(
                key="answer",
                value={
                    "chosen_options": list(event["chosen_options"]),
                    "responded_by_user": event.get("responded_by_user"),
                    "responded_at": str(event.get("responded_at")),
                },
            )
        return super().execute_complete(context, event)


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
        "approval": Param(
            False,
            type="boolean",
            description="ask a person in Browse > Required Actions before the champion moves "
            "(always asked when trading live or with promotion.require_approval)",
        ),
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
        from pipeline.tasks.promote import verify

        params: dict = context["params"]  # type: ignore[assignment]
        return verify(load_settings(), params["name"], params["version"])

    @task
    def evaluate(target: dict) -> dict:
        from pipeline.tasks.promote import evaluate

        return evaluate(load_settings(), target)

    @task
    def gate(pair: dict) -> dict:
        from pipeline.tasks.promote import gate

        return gate(load_settings(), pair)

    @task.branch
    def ask(gated: dict, **context: object) -> str:
        from airflow.configuration import conf

        from pipeline.tasks.promote import ask

        params: dict = context["params"]  # type: ignore[assignment]
        base = conf.get("api", "base_url", fallback="") or ""
        request = ask(
            load_settings(),
            gated,
            force=params["force"],
            asked=params["approval"],
            plot_url=f"{base.rstrip('/')}{PLOTS}/{gated['name']}/{gated['version']}.png",
        )
        context["ti"].xcom_push(key="request", value=request)  # type: ignore[attr-defined]
        return "approve" if request["ask"] else "apply"

    approve = AnsweredApproval(
        task_id="approve",
        subject="{{ ti.xcom_pull(task_ids='ask', key='request')['subject'] }}",
        body="{{ ti.xcom_pull(task_ids='ask', key='request')['body'] }}",
        defaults=ApprovalOperator.REJECT,
        response_timeout=timedelta(hours=SETTINGS.promotion.approval_timeout_hours),
    )

    @task(trigger_rule="none_failed_min_one_success")
    def apply(gated: dict, **context: object) -> dict:
        from pipeline.tasks.promote import apply

        params: dict = context["params"]  # type: ignore[assignment]
        return apply(
            load_settings(),
            gated,
            who=f"airflow:{context['run_id']}",
            reason=params["reason"],
            force=params["force"],
            asked=params["approval"],
            answer=context["ti"].xcom_pull(task_ids="approve", key="answer"),  # type: ignore[attr-defined]
        )

    @task(trigger_rule="none_failed")
    def report(gated: dict, **context: object) -> str:
        from pipeline.tasks.promote import report

        ti = context["ti"]
        return report(
            load_settings(),
            gated,
            ti.xcom_pull(task_ids="apply"),  # type: ignore[attr-defined]
            ti.xcom_pull(task_ids="approve", key="answer"),  # type: ignore[attr-defined]
        )

    gated = gate(evaluate(verify()))
    moved = apply(gated)
    ask(gated) >> [approve, moved]
    approve >> moved
    moved >> report(gated)


dag_object = promote()
