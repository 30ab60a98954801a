"""Aliases (the `champion`) and their audit trail: moves, refusals, rollback, archiving.

Aliases move in one transaction with their audit row. A move names the alias
generation it saw; when another promotion moved the alias in between, the
database matches no row and the loser gets a `PromotionConflict`: exactly one of
two concurrent promotions wins, and nothing is half done. Archiving lives here
because it and a move guard each other: the champion cannot be archived, and an
archived version cannot become champion.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.db.schema import model_aliases, model_versions, promotion_events
from pipeline.errors import ModelRejected, PromotionConflict
from pipeline.models.registry.versions import get_version

CHAMPION = "champion"
ALIAS_CHANNEL = "cryptobots_alias_moved"
"""Postgres NOTIFY channel: the payload is the model name whose alias moved."""
MOVES = ("promote", "rollback")
"""Audit actions that moved an alias; `reject` rows record a refused promotion."""
REJECT = "reject"


def alias(engine: Engine, name: str, alias_name: str = CHAMPION) -> dict[str, Any] | None:
    """The version an alias points at, with the alias `generation`, or None."""
    with engine.connect() as conn:
        row = (
            conn.execute(
                sa.select(model_versions, model_aliases.c.generation)
                .join(
                    model_aliases,
                    (model_aliases.c.name == model_versions.c.name)
                    & (model_aliases.c.version == model_versions.c.version),
                )
                .where(model_aliases.c.name == name, model_aliases.c.alias == alias_name)
            )
            .mappings()
            .first()
        )
    return None if row is None else dict(row)


def move_alias(
    engine: Engine,
    name: str,
    version: int,
    *,
    seen_generation: int | None,
    who: str,
    reason: str | None,
    gates: dict[str, Any] | None = None,
    forced: bool = False,
    action: str = "promote",
    alias_name: str = CHAMPION,
) -> dict[str, Any]:
    """Point `alias_name` at `version` if it is still at `seen_generation` (None: unset),
    writing the audit row in the same transaction; PromotionConflict otherwise."""
    row = get_version(engine, name, version)
    if row["status"] == "archived":
        raise ModelRejected(f"{name} v{version} is archived: it cannot become {alias_name}")
    conflict = PromotionConflict(
        f"{alias_name} of {name} was moved by another promotion meanwhile; nothing changed: "
        "look at python -m pipeline models list and promote again if still wanted"
    )
    try:
        with engine.begin() as conn:
            current = (
                conn.execute(
                    sa.select(model_aliases.c.version, model_aliases.c.generation).where(
                        model_aliases.c.name == name, model_aliases.c.alias == alias_name
                    )
                )
                .mappings()
                .first()
            )
            if seen_generation is None:
                if current is not None:
                    raise conflict
                conn.execute(
                    sa.insert(model_aliases).values(
                        name=name, alias=alias_name, version=version, generation=1
                    )
                )
                before = None
            else:
                moved = conn.execute(
                    sa.update(model_aliases)
                    .where(
                        model_aliases.c.name == name,
                        model_aliases.c.alias == alias_name,
                        model_aliases.c.generation == seen_generation,
                    )
                    .values(
                        version=version, generation=seen_generation + 1, updated_at=sa.func.now()
                    )
                ).rowcount
                if moved != 1 or current is None:
                    raise conflict
                before = current["version"]
            event = {
                "name": name,
                "alias": alias_name,
                "from_version": before,
                "to_version": version,
                "action": action,
                "who": who,
                "reason": reason,
                "gates": json.loads(json.dumps(gates or {})),
                "forced": forced,
            }
            conn.execute(sa.insert(promotion_events).values(**event))
            if conn.dialect.name == "postgresql":  # wakes traders now (delivered on commit)
                conn.execute(
                    sa.text("SELECT pg_notify(:channel, :name)"),
                    {"channel": ALIAS_CHANNEL, "name": name},
                )
    except sa.exc.IntegrityError as error:
        raise conflict from error
    return event


def promotion_history(
    engine: Engine,
    name: str,
    alias_name: str = CHAMPION,
    actions: tuple[str, ...] | None = None,
) -> list[dict]:
    """Audit rows of an alias, newest first: every one, or only those of `actions`
    (`MOVES` for the moves, without refused promotions)."""
    query = sa.select(promotion_events).where(
        promotion_events.c.name == name, promotion_events.c.alias == alias_name
    )
    if actions is not None:
        query = query.where(promotion_events.c.action.in_(actions))
    with engine.connect() as conn:
        rows = conn.execute(query.order_by(promotion_events.c.id.desc())).mappings()
        return [dict(r) for r in rows]


def record_refusal(
    engine: Engine,
    name: str,
    version: int,
    *,
    who: str,
    reason: str,
    gates: dict[str, Any] | None = None,
    alias_name: str = CHAMPION,
) -> dict[str, Any]:
    """Audit a promotion a person refused (action `reject`): the alias stays where it is."""
    current = alias(engine, name, alias_name)
    event = {
        "name": name,
        "alias": alias_name,
        "from_version": None if current is None else current["version"],
        "to_version": version,
        "action": REJECT,
        "who": who,
        "reason": reason,
        "gates": json.loads(json.dumps(gates or {})),
        "forced": False,
    }
    with engine.begin() as conn:
        conn.execute(sa.insert(promotion_events).values(**event))
    return event


def rollback(engine: Engine, name: str, *, who: str, reason: str | None = None) -> dict:
    """Point the champion back at the version it held before its last move."""
    current = alias(engine, name)
    history = promotion_history(engine, name, actions=MOVES)
    if current is None or not history or history[0]["from_version"] is None:
        raise ModelRejected(f"{name} has no earlier champion to roll back to")
    return move_alias(
        engine,
        name,
        history[0]["from_version"],
        seen_generation=current["generation"],
        who=who,
        reason=reason or "rollback",
        action="rollback",
    )


def archive(engine: Engine, name: str, version: int) -> None:
    """Retire a version; the champion cannot be archived."""
    current = alias(engine, name)
    if current is not None and current["version"] == version:
        raise ModelRejected(f"{name} v{version} is the champion: promote another one first")
    get_version(engine, name, version)
    with engine.begin() as conn:
        conn.execute(
            sa.update(model_versions)
            .where(model_versions.c.name == name, model_versions.c.version == version)
            .values(status="archived")
        )
