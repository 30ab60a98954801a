"""Approval before live: a person reads a candidate's evidence and approves or rejects
its promotion in Airflow (Browse > Required Actions) before the champion moves.

Asked whenever the pipeline trades live (`trading_mode: live`), when
`promotion.require_approval` is set, or when a promote run asks for it; a promotion
whose gates failed (and is not forced) is refused without asking anyone. A rejection,
or no answer within `promotion.approval_timeout_hours`, leaves the champion unchanged
and is audited as a `reject` row of `promotion_events`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine

from pipeline.errors import ModelRejected
from pipeline.models.registry import get_version, record_refusal
from pipeline.settings import Settings

APPROVE = "Approve"
REJECT = "Reject"


def approval_required(settings: Settings, asked: bool = False) -> bool:
    """Whether a person must approve a promotion: always when trading live."""
    return asked or settings.trading_mode == "live" or settings.promotion.require_approval


def needs_person(settings: Settings, verdict: dict[str, Any], force: bool, asked: bool) -> bool:
    """Ask a person only about a promotion that would go ahead (gates passed, or forced)."""
    return approval_required(settings, asked) and (verdict["passed"] or force)


def ask(
    settings: Settings,
    engine: Engine,
    gated: dict[str, Any],
    *,
    force: bool,
    asked: bool,
    plot_url: str | None = None,
) -> dict[str, Any]:
    """Whether the gated promotion `gated` (evaluate_pair's result with its `verdict`)
    waits for a person, with the subject and body they will read."""
    if not needs_person(settings, gated["verdict"], force, asked):
        return {"ask": False, "subject": "", "body": ""}
    request = approval_request(
        engine,
        gated["name"],
        gated["version"],
        gated,
        gated["verdict"],
        trading_mode=settings.trading_mode,
        plot_url=plot_url,
    )
    return {"ask": True, **request}


def approval_request(
    engine: Engine,
    name: str,
    version: int,
    pair: dict[str, Any],
    verdict: dict[str, Any],
    *,
    trading_mode: str,
    plot_url: str | None = None,
) -> dict[str, str]:
    """The subject and Markdown body a person decides on: the gates, the walk-forward
    folds with PSR/DSR and the bootstrap interval, the promotion window beside the
    champion's, and the equity plot."""
    metrics = get_version(engine, name, version)["metrics"] or {}
    champion = pair.get("champion")
    subject = (
        f"Promote {name} v{version} to champion"
        f"{' (trading live)' if trading_mode == 'live' else ''}?"
    )
    lines = [
        f"**{name} v{version}** would replace "
        + (f"**v{champion['version']}**" if champion else "no champion (the first model)")
        + f" as the model the trader serves ({trading_mode}).",
        "",
        "| gate | passed | figures |",
        "|---|---|---|",
    ]
    for gate, check in verdict["checks"].items():
        figures = ", ".join(
            f"{k} {_figure(v)}" for k, v in check.items() if k not in ("passed", "required")
        )
        optional = "" if check.get("required", True) else " (reported)"
        lines.append(f"| {gate}{optional} | {'yes' if check['passed'] else 'NO'} | {figures} |")
    lines += ["", *_walk_forward_lines(metrics.get("walk_forward"))]
    lines += [
        "",
        f"Promotion window {_day(pair['candidate']['window'][0])} to "
        f"{_day(pair['candidate']['window'][1])}:",
        "",
    ]
    lines += ["| model | Sharpe | return | max drawdown |", "|---|---|---|---|"]
    rows = [("candidate", pair["candidate"]["policy"])]
    if champion:
        rows.append((f"champion v{champion['version']}", champion["policy"]))
    rows.append(("buy and hold", pair["candidate"]["buy_and_hold"]))
    for label, m in rows:
        lines.append(
            f"| {label} | {m['sharpe']:.2f} | {m['total_return']:+.1%} | {m['max_drawdown']:.1%} |"
        )
    if plot_url and metrics.get("validation_plot"):
        lines += ["", f"![equity curve of v{version}]({plot_url})"]
    lines += [
        "",
        "**Approve** moves the champion now (refused if another promotion moved it "
        "meanwhile); **Reject** leaves it where it is. Both are audited.",
    ]
    return {"subject": subject, "body": "\n".join(lines)}


def _walk_forward_lines(walk_forward: dict[str, Any] | None) -> list[str]:
    if not walk_forward:
        return ["No walk-forward folds: evidence is the promotion window alone."]
    sure = walk_forward["confidence"]
    chained = walk_forward["chained"]
    lines = [
        f"Walk-forward, {len(walk_forward['folds'])} folds: chained Sharpe "
        f"{chained['sharpe']:.2f} (bootstrap {sure['sharpe_low']:.2f} to "
        f"{sure['sharpe_high']:.2f}), PSR {sure['psr']:.3f}, DSR {sure['dsr']:.3f} over "
        f"{sure['n_trials']} trials, worst fold drawdown {walk_forward['worst_drawdown']:.1%}.",
        "",
        "| fold | Sharpe | return | max drawdown |",
        "|---|---|---|---|",
    ]
    for fold in walk_forward["folds"]:
        lines.append(
            f"| {_day(fold['valid'][0])} to {_day(fold['valid'][1])} | {fold['sharpe']:.2f} | "
            f"{fold['total_return']:+.1%} | {fold['max_drawdown']:.1%} |"
        )
    return lines


def decision(response: dict[str, Any] | None) -> dict[str, Any]:
    """A person's answer (the approval task's result) as {approved, by, at}; no answer
    is no approval."""
    if not response or not response.get("chosen_options"):
        raise ModelRejected(
            "this promotion needs a person's approval and has none: answer its 'approve' "
            "task under Browse > Required Actions (a task marked success by hand is no answer)"
        )
    user = response.get("responded_by_user") or {}
    return {
        "approved": response["chosen_options"] == [APPROVE],
        "by": user.get("name") or user.get("id") or "no answer (timed out)",
        "at": str(response.get("responded_at")),
    }


def record_rejection(
    engine: Engine, name: str, version: int, answer: dict[str, Any], verdict: dict[str, Any]
) -> dict[str, Any]:
    """Audit a rejected (or unanswered) approval; the champion does not move."""
    return record_refusal(
        engine,
        name,
        version,
        who=f"approval:{answer['by']}",
        reason=f"promotion rejected by {answer['by']} at {answer['at']}",
        gates=verdict,
    )


def conclude(
    engine: Engine,
    gated: dict[str, Any],
    event: dict[str, Any] | None,
    response: dict[str, Any] | None,
) -> str:
    """One line on how a promote run ended; a rejection (the move never ran) is audited
    here."""
    name, version = gated["name"], gated["version"]
    if event is not None:
        forced = " (forced)" if event["forced"] else ""
        return f"{name}: champion v{event['from_version'] or '-'} -> v{event['to_version']}{forced}"
    answer = decision(response)
    if answer["approved"]:
        raise ModelRejected(
            f"{name} v{version} was approved by {answer['by']} but never moved: look at the "
            "apply task's log, then trigger promote again"
        )
    refusal = record_rejection(engine, name, version, answer, gated["verdict"])
    stays = refusal["from_version"] or "-"
    return f"{name}: v{version} {refusal['reason']}; the champion stays v{stays}"


def _figure(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return " to ".join(_day(v) if isinstance(v, int) else str(v) for v in value)
    return str(value)


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")
