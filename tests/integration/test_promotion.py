"""Promotion: gates on the ONNX files, the champion alias, forced overrides, the CLI."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.engine import Engine

from pipeline.cli import main
from pipeline.data.backfill import backfill
from pipeline.db.engine import create_engine
from pipeline.db.migrate import upgrade
from pipeline.errors import ConfigurationError, ModelRejected
from pipeline.learn.snapshot import snapshot_window
from pipeline.learn.train_request import TrainRequest
from pipeline.learn.training import train_candidate
from pipeline.learn.walk_forward import score
from pipeline.learn.windows import Window
from pipeline.models.approval import approval_required, ask, conclude, decision, needs_person
from pipeline.models.promotion import apply_promotion, evaluate_pair, gate_pair, promote
from pipeline.models.registry import (
    MOVES,
    alias,
    get_version,
    promotion_history,
    register,
    set_metrics,
)
from pipeline.settings import Market, PromotionSettings, Settings
from pipeline.timeutil import DAY_MS
from tests.support.exchange import exchange_client

BTC = Market.model_validate("binance:BTC/USDT:1h")
pytestmark = pytest.mark.postgres


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


END = ms("2020-01-01")


@pytest.fixture(scope="module")
def world(pg_url: str, data_dir: Path, tmp_path_factory) -> Iterator[tuple[Engine, Settings, list]]:
    """Stored BTC candles and two trained, exported candidates (their ONNX files)."""
    from pipeline.exchanges.simulator.app import SimulatorConfig, running

    engine = create_engine(pg_url)
    upgrade(engine)
    with running(SimulatorConfig(data_dir=data_dir)) as sim:
        backfill(exchange_client(sim.url), engine, BTC, ms("2019-08-25"), END)
    settings = Settings(
        var_dir=tmp_path_factory.mktemp("var"),
        db_url=pg_url,
        promotion=PromotionSettings(min_dsr=0.0),  # tiny test models: the other gates
    )
    train, valid = Window(ms("2019-09-01"), ms("2019-12-01")), Window(ms("2019-12-01"), END)
    snapshot = snapshot_window(settings, engine, BTC, train, valid)
    onnx_files = []
    for seed in (1, 2):
        request = TrainRequest("dqn", BTC, train, valid, steps=3_000, num_envs=8, seed=seed)
        run_id = train_candidate(settings, engine, request, snapshot)
        onnx_files.append(Path(settings.var_dir / "runs" / run_id / "policy.onnx"))
    yield engine, settings, onnx_files
    engine.dispose()


def fresh_model(world) -> tuple[str, list[int]]:
    """A model name of its own with both candidates registered (parity recorded)."""
    engine, settings, files = world
    name = f"test-{uuid.uuid4().hex[:8]}"
    versions = [
        register(engine, settings.artifact_root, f, name, metrics={"parity_max_abs_diff": 1e-7})
        for f in files
    ]
    return name, versions


def with_gates(settings: Settings, **gates_: float) -> Settings:
    return settings.model_copy(
        update={"promotion": PromotionSettings(**{"min_dsr": 0.0, **gates_})}
    )


def test_the_first_model_becomes_champion_on_parity_and_evidence(world) -> None:
    engine, settings, _ = world
    name, (first, _) = fresh_model(world)
    event = promote(settings, engine, name, first, who="t", reason="first", end_ms=END)
    assert alias(engine, name)["version"] == first
    assert event["from_version"] is None
    assert event["gates"]["passed"]
    assert set(event["gates"]["checks"]) == {"parity", "evidence", "beats_buy_and_hold"}
    assert event["gates"]["checks"]["beats_buy_and_hold"]["required"] is False


def test_a_first_model_with_weak_evidence_is_refused_and_stays_a_candidate(world) -> None:
    engine, settings, _ = world
    name, (first, _) = fresh_model(world)
    demanding = settings.model_copy(update={"promotion": PromotionSettings(min_dsr=0.999)})
    with pytest.raises(ModelRejected, match=r"fails the promotion gates \['evidence'\]"):
        promote(demanding, engine, name, first, who="t", end_ms=END)
    assert alias(engine, name) is None
    assert promotion_history(engine, name) == []


def test_a_worse_candidate_is_refused_and_nothing_changes(world) -> None:
    engine, settings, _ = world
    name, (first, second) = fresh_model(world)
    promote(settings, engine, name, first, who="t", end_ms=END)
    strict = with_gates(settings, sharpe_margin=1000.0)
    with pytest.raises(ModelRejected, match=r"fails the promotion gates \['sharpe_margin'\]"):
        promote(strict, engine, name, second, who="t", end_ms=END)
    assert alias(engine, name)["version"] == first
    assert len(promotion_history(engine, name)) == 1


def test_a_better_candidate_is_promoted_with_its_gate_results(world) -> None:
    engine, settings, _ = world
    name, (first, second) = fresh_model(world)
    promote(settings, engine, name, first, who="t", end_ms=END)
    lenient = with_gates(settings, sharpe_margin=-1000.0, max_drawdown=1.0)
    event = promote(lenient, engine, name, second, who="t", reason="better", end_ms=END)
    assert (event["from_version"], event["to_version"], event["forced"]) == (first, second, False)
    assert event["gates"]["checks"]["sharpe_margin"]["passed"]
    assert alias(engine, name)["version"] == second


def test_a_forced_promotion_needs_a_reason_and_is_recorded_as_forced(world) -> None:
    engine, settings, _ = world
    name, (first, second) = fresh_model(world)
    promote(settings, engine, name, first, who="t", end_ms=END)
    strict = with_gates(settings, sharpe_margin=1000.0)
    with pytest.raises(ConfigurationError, match="needs a reason"):
        promote(strict, engine, name, second, who="t", force=True, end_ms=END)
    event = promote(strict, engine, name, second, who="t", force=True, reason="ops", end_ms=END)
    assert event["forced"] is True
    assert promotion_history(engine, name)[0]["reason"] == "ops"
    assert not event["gates"]["passed"]


def test_a_candidate_without_export_parity_fails_the_parity_gate(world) -> None:
    engine, settings, files = world
    name = f"test-{uuid.uuid4().hex[:8]}"
    version = register(engine, settings.artifact_root, files[0], name)
    with pytest.raises(ModelRejected, match=r"\['parity'\]"):
        promote(settings, engine, name, version, who="t", end_ms=END)
    assert alias(engine, name) is None


def test_models_cli_lists_promotes_and_rolls_back(world, monkeypatch, capsys) -> None:
    engine, settings, _ = world
    monkeypatch.setenv("CRYPTOBOTS_DB_URL", settings.db_url)
    monkeypatch.setenv("CRYPTOBOTS_VAR_DIR", str(settings.var_dir))
    monkeypatch.setenv("CRYPTOBOTS_PROMOTION__SHARPE_MARGIN", "-1000")
    monkeypatch.setenv("CRYPTOBOTS_PROMOTION__MIN_DSR", "0")
    name, (first, second) = fresh_model(world)
    for version in (first, second):
        assert main(["models", "--name", name, "promote", str(version), "--end", "2020-01-01"]) == 0
    assert main(["models", "--name", name, "list"]) == 0
    listing = capsys.readouterr().out
    assert "champion" in listing
    assert name in listing
    assert main(["models", "--name", name, "rollback", "--reason", "drill"]) == 0
    assert f"v{second} -> v{first} (rollback)" in capsys.readouterr().out
    assert alias(engine, name)["version"] == first
    assert main(["models", "--name", name, "show", "99"]) == 2
    assert get_version(engine, name, first)["status"] == "candidate"


def test_auto_promotion_of_a_training_run_promotes_then_reports_a_refusal(world) -> None:
    engine, settings, _ = world
    from pipeline.learn.training_runs import recent_runs
    from pipeline.models.promotion import promote_run

    run = next(r for r in recent_runs(engine) if (r["artifacts"] or {}).get("model_version"))
    name, version = run["artifacts"]["model_name"], run["artifacts"]["model_version"]
    first = promote_run(settings, engine, run["id"], who="t")
    assert first["promoted"] is True
    assert alias(engine, name)["version"] == version
    again = promote_run(settings, engine, run["id"], who="t")
    assert again["promoted"] is False
    assert "already the champion" in again["why"]


def test_auto_promotion_waits_for_a_person_when_trading_live(world) -> None:
    engine, settings, _ = world
    from pipeline.learn.training_runs import recent_runs
    from pipeline.models.promotion import promote_run

    run = next(r for r in recent_runs(engine) if (r["artifacts"] or {}).get("model_version"))
    name = run["artifacts"]["model_name"]
    before = alias(engine, name)
    live = settings.model_copy(update={"trading_mode": "live"})
    outcome = promote_run(live, engine, run["id"], who="t")
    assert outcome["promoted"] is False
    assert "Required Actions" in outcome["why"]
    assert "promote DAG" in outcome["why"]
    assert alias(engine, name) == before


def test_a_person_must_approve_when_live_or_required_and_only_a_promotion_that_would_go_ahead(
    world,
) -> None:
    _, settings, _ = world
    live = settings.model_copy(update={"trading_mode": "live"})
    required = with_gates(settings, require_approval=True)
    passed, failed = {"passed": True}, {"passed": False}
    assert not approval_required(settings)
    assert approval_required(settings, asked=True)
    assert approval_required(live)
    assert approval_required(required)
    assert needs_person(live, passed, force=False, asked=False)
    assert not needs_person(live, failed, force=False, asked=False), "refused without asking"
    assert needs_person(live, failed, force=True, asked=False), "a forced move is asked too"
    assert not needs_person(settings, passed, force=False, asked=False)


def approval_world(world) -> tuple[str, int, int, dict]:
    """A model whose first version is champion and whose second, gated against it and
    carrying walk-forward evidence, waits for a person."""
    engine, settings, _files = world
    name, (first, second) = fresh_model(world)
    promote(settings, engine, name, first, who="t", reason="first", end_ms=END)
    rng = np.random.default_rng(0)
    folds = [
        {
            "valid": [END - (3 - k) * 14 * DAY_MS, END - (2 - k) * 14 * DAY_MS],
            "series": {
                name_: {"returns": list(rng.normal(0.0005, 0.01, 336)), "positions": [1.0] * 336}
                for name_ in ("policy", "buy_and_hold")
            },
        }
        for k in range(2)
    ]
    evidence = score(folds, BTC.timeframe_ms, n_trials=2)
    set_metrics(engine, name, second, {"walk_forward": evidence})
    pair = evaluate_pair(settings, engine, name, second, END)
    verdict = gate_pair(with_gates(settings, sharpe_margin=-100), engine, name, second, pair)
    return name, first, second, {**pair, "name": name, "version": second, "verdict": verdict}


def test_the_approval_request_shows_the_gates_the_folds_and_the_window(world) -> None:
    engine, settings, _ = world
    name, first, second, gated = approval_world(world)
    live = settings.model_copy(update={"trading_mode": "live"})
    request = ask(live, engine, gated, force=False, asked=False, plot_url="/p.png")
    assert request["ask"] is True
    assert request["subject"] == f"Promote {name} v{second} to champion (trading live)?"
    body = request["body"]
    assert f"would replace **v{first}**" in body
    assert "| evidence | yes |" in body
    assert "| parity | yes |" in body
    assert "Walk-forward, 2 folds" in body
    assert "DSR" in body
    assert "PSR" in body
    assert body.count("| 20") >= 2, "one row per fold"
    assert f"| champion v{first} |" in body
    assert "| buy and hold |" in body
    assert ask(settings, engine, gated, force=False, asked=False)["ask"] is False


def test_a_rejection_is_audited_and_leaves_the_champion_where_it_was(world) -> None:
    engine, _, _ = world
    name, first, second, gated = approval_world(world)
    response = {
        "chosen_options": ["Reject"],
        "responded_by_user": {"id": "7", "name": "alice"},
        "responded_at": "2026-12-03T10:00:00+00:00",
    }
    line = conclude(engine, gated, None, response)
    assert alias(engine, name)["version"] == first
    assert line.startswith(f"{name}: v{second} promotion rejected by alice")
    refusal = promotion_history(engine, name)[0]
    assert (refusal["action"], refusal["who"], refusal["from_version"], refusal["to_version"]) == (
        "reject",
        "approval:alice",
        first,
        second,
    )
    assert refusal["gates"]["passed"] is True
    assert promotion_history(engine, name, actions=MOVES)[0]["action"] == "promote"


def test_an_approved_promotion_records_who_approved_it(world) -> None:
    engine, _, _ = world
    name, first, second, gated = approval_world(world)
    answer = decision(
        {
            "chosen_options": ["Approve"],
            "responded_by_user": {"id": "7", "name": "alice"},
            "responded_at": "2026-12-03T10:00:00+00:00",
        }
    )
    event = apply_promotion(
        engine,
        name,
        second,
        gated["verdict"],
        gated["generation"],
        who="t",
        reason="weekly",
        force=False,
        approval=answer,
    )
    assert alias(engine, name)["version"] == second
    assert event["reason"] == "weekly; approved by alice"
    assert event["gates"]["approval"]["by"] == "alice"
    assert conclude(engine, gated, event, None) == f"{name}: champion v{first} -> v{second}"


def test_a_promotion_without_an_answer_or_with_a_rejection_never_moves(world) -> None:
    engine, _, _ = world
    name, first, second, gated = approval_world(world)
    with pytest.raises(ModelRejected, match="needs a person's approval and has none"):
        decision(None)
    rejected = decision({"chosen_options": ["Reject"], "responded_by_user": None})
    assert rejected == {"approved": False, "by": "no answer (timed out)", "at": "None"}
    with pytest.raises(ModelRejected, match="rejected by no answer"):
        apply_promotion(
            engine,
            name,
            second,
            gated["verdict"],
            gated["generation"],
            who="t",
            reason=None,
            force=False,
            approval=rejected,
        )
    assert alias(engine, name)["version"] == first
