"""The `promote` DAG's tasks (verify, evaluate, gate, ask, apply, report) and the
`models` commands: each opens the database, does one step, and returns plain values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.settings import Settings


def verify(settings: Settings, name: str, version: int) -> dict[str, Any]:
    """The version to promote (0: the candidate the latest training run selected), its
    artifact verified (checksum, ONNX checker, signature against its feature spec)."""
    import tempfile
    from pathlib import Path

    from pipeline.db.engine import opened
    from pipeline.models.promotion import best_recent_candidate
    from pipeline.models.registry import load_verified

    with opened(settings.db_url) as engine:
        version = version or best_recent_candidate(engine, name)
        with tempfile.TemporaryDirectory() as folder:
            verified = load_verified(engine, name, version, Path(folder))
    return {"name": name, "version": version, "sha256": verified.sha256}


def evaluate(settings: Settings, target: Mapping[str, Any]) -> dict[str, Any]:
    """`target` with the candidate and the champion backtested from their ONNX files on
    the same most recent window."""
    from pipeline.db.engine import opened
    from pipeline.models.promotion import evaluate_pair, evaluation_end

    name, version = target["name"], target["version"]
    with opened(settings.db_url) as engine:
        end = evaluation_end(engine, name, version)
        return {**target, **evaluate_pair(settings, engine, name, version, end)}


def gate(settings: Settings, pair: Mapping[str, Any]) -> dict[str, Any]:
    """`pair` with the gates' verdict."""
    from pipeline.db.engine import opened
    from pipeline.models.promotion import gate_pair

    with opened(settings.db_url) as engine:
        verdict = gate_pair(settings, engine, pair["name"], pair["version"], pair)
    return {**pair, "verdict": verdict}


def ask(
    settings: Settings, gated: Mapping[str, Any], *, force: bool, asked: bool, plot_url: str
) -> dict[str, Any]:
    """Whether a person must approve this promotion, with the request shown to them."""
    from pipeline.db.engine import opened
    from pipeline.models.approval import ask as approval_request

    with opened(settings.db_url) as engine:
        return approval_request(
            settings, engine, gated, force=force, asked=asked, plot_url=plot_url
        )


def apply(
    settings: Settings,
    gated: Mapping[str, Any],
    *,
    who: str,
    reason: str | None,
    force: bool,
    asked: bool,
    answer: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Move the champion alias (audited) unless the gates or the person refused."""
    from pipeline.db.engine import opened
    from pipeline.models.approval import decision, needs_person
    from pipeline.models.promotion import apply_promotion

    approval = None
    if needs_person(settings, gated["verdict"], force, asked):
        approval = decision(answer)
    with opened(settings.db_url) as engine:
        return apply_promotion(
            engine,
            gated["name"],
            gated["version"],
            gated["verdict"],
            gated["generation"],
            who=who,
            reason=reason or None,
            force=force,
            approval=approval,
        )


def report(
    settings: Settings,
    gated: Mapping[str, Any],
    applied: Mapping[str, Any] | None,
    answer: Mapping[str, Any] | None,
) -> str:
    """What happened, for the run's log; a rejection is audited here."""
    from pipeline.db.engine import opened
    from pipeline.models.approval import conclude

    with opened(settings.db_url) as engine:
        return conclude(engine, gated, applied, answer)


def promote_version(
    settings: Settings,
    name: str,
    version: int,
    *,
    who: str,
    reason: str | None,
    force: bool,
    end_ms: int | None = None,
) -> dict[str, Any]:
    """`python -m pipeline models promote`: gate `version` on the window ending at `end_ms`
    (default: its latest candle) and make it champion; the audit event."""
    from pipeline.db.engine import opened
    from pipeline.models.promotion import evaluation_end, promote
    from pipeline.models.registry import get_version

    with opened(settings.db_url) as engine:
        get_version(engine, name, version)
        end = end_ms or evaluation_end(engine, name, version)
        return promote(
            settings, engine, name, version, who=who, reason=reason, force=force, end_ms=end
        )


def rollback(settings: Settings, name: str, *, who: str, reason: str | None) -> dict[str, Any]:
    """`python -m pipeline models rollback`: the champion back to the previous one."""
    from pipeline.db.engine import opened
    from pipeline.models.registry import rollback as roll_back

    with opened(settings.db_url) as engine:
        return roll_back(engine, name, who=who, reason=reason)


def versions(settings: Settings, name: str | None) -> list[dict[str, Any]]:
    """`python -m pipeline models list`: every version, newest first."""
    from pipeline.db.engine import opened
    from pipeline.models.registry import list_versions

    with opened(settings.db_url) as engine:
        return list_versions(engine, name)


def version(settings: Settings, name: str, number: int) -> dict[str, Any]:
    """`python -m pipeline models show`: one version in full."""
    from pipeline.db.engine import opened
    from pipeline.models.registry import get_version

    with opened(settings.db_url) as engine:
        return get_version(engine, name, number)
