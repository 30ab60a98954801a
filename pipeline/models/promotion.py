"""Promotion: re-evaluate a candidate and the champion from their ONNX files on the same
most recent window, apply the gates, and move the `champion` alias.

Gates (settings `promotion`): every model, the first included, needs its export
parity and evidence: the deflated Sharpe ratio of its walk-forward folds at least
`min_dsr` and no fold deeper in drawdown than `max_fold_drawdown` (a version without
folds is judged by the probabilistic Sharpe ratio of the promotion window alone).
Against a champion, the candidate's Sharpe must also beat the champion's by
`sharpe_margin` and its max drawdown stay within `max_drawdown`. Whether it beats
buy-and-hold is reported, not required. `force` with a reason overrides failed gates and is
recorded as forced. Both models are run by ONNX Runtime from the verified
artifacts, never from Keras: the file that will trade is the one judged.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from pipeline.errors import ConfigurationError, DataValidationError, ModelRejected
from pipeline.learn.evaluate import CostModel, VolatilityTarget
from pipeline.learn.evidence import MIN_RETURNS, probabilistic_sharpe_ratio
from pipeline.learn.export import PARITY_TOLERANCE
from pipeline.learn.onnx_evaluation import backtest_onnx
from pipeline.learn.snapshot import latest_candle_end
from pipeline.learn.windows import Window
from pipeline.models.approval import approval_required
from pipeline.models.registry import alias, get_version, load_verified, move_alias
from pipeline.settings import Market, PromotionSettings, Settings
from pipeline.timeutil import DAY_MS


def evaluate_version(
    settings: Settings, engine: Engine, name: str, version: int, end_ms: int
) -> dict[str, Any]:
    """Backtest a registered version's ONNX file on the `window_days` before `end_ms`."""
    with tempfile.TemporaryDirectory(prefix="cryptobots-eval-") as folder:
        verified = load_verified(engine, name, version, Path(folder))
        lineage = verified.lineage
        market = Market.model_validate(lineage.data_window["market"])
        end = end_ms - end_ms % market.timeframe_ms
        window = Window(end - settings.promotion.window_days * DAY_MS, end)
        t = settings.training
        every = int(lineage.data_window.get("decision_every", 1))
        backtests = backtest_onnx(
            engine,
            verified.path,
            market,
            window,
            lineage.feature_spec.features,
            lineage.action_map,
            every,
            CostModel.per_step(
                t.fee_bps, t.slippage_bps, t.borrow_bps_per_hour, market.timeframe_ms * every
            ),
            what=f"{name} v{version}",
            sizing=VolatilityTarget.from_dict(lineage.sizing),
            rule=lineage.position_rule,
        )
    returns = backtests["policy"].returns
    return {
        "version": version,
        "window": [window.start, window.end],
        "policy": backtests["policy"].metrics,
        "buy_and_hold": backtests["buy_and_hold"].metrics,
        "psr": probabilistic_sharpe_ratio(returns) if len(returns) >= MIN_RETURNS else 0.0,
    }


def evidence_check(
    candidate: dict[str, Any], walk_forward: dict[str, Any] | None, policy: PromotionSettings
) -> dict[str, Any]:
    """The evidence gate: the walk-forward folds' deflated Sharpe ratio and worst fold
    drawdown when the version has them (the train DAG stores them), else the probabilistic
    Sharpe ratio of the promotion window alone (one window: weak evidence by nature)."""
    if walk_forward:
        dsr = float(walk_forward["confidence"]["dsr"])
        worst = float(walk_forward["worst_drawdown"])
        return {
            "passed": dsr >= policy.min_dsr and worst <= policy.max_fold_drawdown,
            "source": f"walk-forward, {len(walk_forward['folds'])} folds",
            "dsr": dsr,
            "min_dsr": policy.min_dsr,
            "worst_fold_drawdown": worst,
            "max_fold_drawdown": policy.max_fold_drawdown,
            "median_fold_sharpe": walk_forward["median_sharpe"],
        }
    psr = float(candidate.get("psr", 0.0))
    return {
        "passed": psr >= policy.min_dsr,
        "source": "the promotion window only (no walk-forward folds: train with the train DAG)",
        "dsr": psr,
        "min_dsr": policy.min_dsr,
    }


def gates(
    candidate: dict[str, Any],
    champion: dict[str, Any] | None,
    parity_max_abs_diff: float | None,
    policy: PromotionSettings,
    walk_forward: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Each gate's verdict and numbers; `passed` when every required gate passes."""
    parity_ok = parity_max_abs_diff is not None and parity_max_abs_diff <= PARITY_TOLERANCE
    checks: dict[str, Any] = {
        "parity": {"passed": parity_ok, "max_abs_diff": parity_max_abs_diff},
        "evidence": evidence_check(candidate, walk_forward, policy),
        "beats_buy_and_hold": {
            "passed": candidate["policy"]["sharpe"] > candidate["buy_and_hold"]["sharpe"],
            "required": False,
            "sharpe": candidate["policy"]["sharpe"],
            "buy_and_hold_sharpe": candidate["buy_and_hold"]["sharpe"],
        },
    }
    if champion is not None:
        need = champion["policy"]["sharpe"] + policy.sharpe_margin
        checks["sharpe_margin"] = {
            "passed": candidate["policy"]["sharpe"] >= need,
            "candidate": candidate["policy"]["sharpe"],
            "champion": champion["policy"]["sharpe"],
            "needed": need,
        }
        checks["max_drawdown"] = {
            "passed": candidate["policy"]["max_drawdown"] <= policy.max_drawdown,
            "candidate": candidate["policy"]["max_drawdown"],
            "limit": policy.max_drawdown,
        }
    required = [c["passed"] for c in checks.values() if c.get("required", True)]
    return {"passed": all(required), "checks": checks, "window": candidate["window"]}


def evaluation_end(engine: Engine, name: str, version: int) -> int:
    """End of the most recent evaluation window: after the newest stored candle of the
    version's market."""
    with tempfile.TemporaryDirectory(prefix="cryptobots-eval-") as folder:
        market_text = load_verified(engine, name, version, Path(folder)).lineage.data_window[
            "market"
        ]
    market = Market.model_validate(market_text)
    end = latest_candle_end(engine, market)
    if end is None:
        raise DataValidationError(f"no stored candles of {market} to evaluate {name} on")
    return end


def evaluate_pair(
    settings: Settings, engine: Engine, name: str, version: int, end_ms: int
) -> dict[str, Any]:
    """The candidate and the current champion (if any) on the same window, plus the alias
    generation they were read at (the promotion only moves the alias if it is unchanged)."""
    current = alias(engine, name)
    if current is not None and current["version"] == version:
        raise ModelRejected(f"{name} v{version} is already the champion")
    return {
        "candidate": evaluate_version(settings, engine, name, version, end_ms),
        "champion": None
        if current is None
        else evaluate_version(settings, engine, name, current["version"], end_ms),
        "generation": None if current is None else current["generation"],
    }


def gate_pair(
    settings: Settings, engine: Engine, name: str, version: int, pair: dict[str, Any]
) -> dict[str, Any]:
    """The gates of an evaluated pair (see `gates`). A model registered from outside is
    the ONNX file that was evaluated and will trade: nothing was converted, its parity is
    exact."""
    metrics = get_version(engine, name, version)["metrics"] or {}
    parity = metrics.get("parity_max_abs_diff", 0.0 if "external" in metrics else None)
    return gates(
        pair["candidate"],
        pair["champion"],
        parity,
        settings.promotion,
        metrics.get("walk_forward"),
    )


def apply_promotion(
    engine: Engine,
    name: str,
    version: int,
    verdict: dict[str, Any],
    generation: int | None,
    *,
    who: str,
    reason: str | None,
    force: bool,
    approval: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Move the champion if the gates passed (or `force` with a reason) and, where a
    person had to decide (`approval`, see pipeline.models.approval), they approved; else refuse."""
    if force and not (reason or "").strip():
        raise ConfigurationError("a forced promotion needs a reason (--reason TEXT)")
    if not verdict["passed"] and not force:
        failed = [
            k for k, c in verdict["checks"].items() if c.get("required", True) and not c["passed"]
        ]
        raise ModelRejected(
            f"{name} v{version} fails the promotion gates {failed}: {verdict['checks']}; "
            "nothing changed (force it with --force --reason TEXT if you must)"
        )
    if approval is not None:
        if not approval["approved"]:
            raise ModelRejected(
                f"{name} v{version} was rejected by {approval['by']}: nothing changed"
            )
        verdict = {**verdict, "approval": approval}
        reason = f"{reason + '; ' if reason else ''}approved by {approval['by']}"
    return move_alias(
        engine,
        name,
        version,
        seen_generation=generation,
        who=who,
        reason=reason,
        gates=verdict,
        forced=force and not verdict["passed"],
    )


def promote(
    settings: Settings,
    engine: Engine,
    name: str,
    version: int,
    *,
    who: str,
    reason: str | None = None,
    force: bool = False,
    end_ms: int,
) -> dict[str, Any]:
    """Evaluate, gate and move the champion in one call (the CLI); returns the audit event
    with the gate results. Failed gates raise ModelRejected unless forced with a reason."""
    if force and not (reason or "").strip():
        raise ConfigurationError("a forced promotion needs a reason (--reason TEXT)")
    pair = evaluate_pair(settings, engine, name, version, end_ms)
    verdict = gate_pair(settings, engine, name, version, pair)
    return apply_promotion(
        engine, name, version, verdict, pair["generation"], who=who, reason=reason, force=force
    )


def best_recent_candidate(engine: Engine, name: str) -> int:
    """The candidate of the latest training batch (one Airflow run, or the newest CLI run):
    the one the train DAG selected by walk-forward score, else the best validation Sharpe."""
    import sqlalchemy as sa

    from pipeline.db.schema import model_versions, training_runs

    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                model_versions.c.version,
                model_versions.c.metrics,
                model_versions.c.status,
                training_runs.c.orchestrator_run,
                training_runs.c.started_at,
            )
            .join(training_runs, training_runs.c.id == model_versions.c.training_run)
            .where(model_versions.c.name == name)
            .order_by(training_runs.c.started_at.desc())
        ).all()
    if not rows:
        raise ModelRejected(f"{name} has no trained candidate: run the train DAG first")
    newest = rows[0]
    batch_of = (newest.orchestrator_run or "").split("/")[0]
    batch = [
        r
        for r in rows
        if r.status == "candidate"
        and (
            (batch_of and (r.orchestrator_run or "").split("/")[0] == batch_of)
            or r.version == newest.version
        )
    ]
    if not batch:
        raise ModelRejected(f"{name}: the latest training batch has no candidate left")

    def rank(row: Any) -> tuple[int, float]:
        metrics = row.metrics or {}
        if metrics.get("walk_forward"):
            return 1, float(metrics["walk_forward"]["median_sharpe"])
        return 0, float((metrics.get("validation") or {}).get("sharpe", float("-inf")))

    return int(max(batch, key=rank).version)


def promote_run(settings: Settings, engine: Engine, run_id: str, *, who: str) -> dict[str, Any]:
    """Gate the model version a training run registered and promote it if the gates pass
    (the train DAG's `auto_promote`); a refusal is reported, not raised."""
    from pipeline.learn.training_runs import get_run

    artifacts = get_run(engine, run_id)["artifacts"] or {}
    name, version = artifacts.get("model_name"), artifacts.get("model_version")
    if not name or not version:
        raise ModelRejected(f"training run {run_id} registered no model version")
    if approval_required(settings):
        return {
            "promoted": False,
            "name": name,
            "version": int(version),
            "why": f"a person approves every promotion here (trading_mode {settings.trading_mode}, "
            f"promotion.require_approval {settings.promotion.require_approval}): trigger the "
            f"promote DAG with name {name} and version {version}, then answer it under "
            "Browse > Required Actions",
        }
    try:
        event = promote(
            settings,
            engine,
            name,
            int(version),
            who=who,
            reason=f"auto_promote after training run {run_id}",
            end_ms=evaluation_end(engine, name, int(version)),
        )
    except ModelRejected as refusal:
        return {"promoted": False, "name": name, "version": int(version), "why": str(refusal)}
    return {"promoted": True, "name": name, "version": int(version), "event": event}
