"""Model versions: register a verified policy, read versions, record their metrics.

A new version is numbered one past the latest of its name, a `candidate` until an
alias names it; loading a registered version fetches and verifies its artifact first.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.db.schema import model_aliases, model_versions
from pipeline.errors import PromotionConflict, VersionNotFound
from pipeline.models.registry.artifacts import (
    Verified,
    fetch_artifact,
    store_artifact,
    verify_artifact,
)


def model_name(market: str) -> str:
    """The registry name of a market's models: 'binance:BTC/USDT:1h' -> 'binance-btc-usdt-1h'."""
    return re.sub(r"[^a-z0-9]+", "-", market.lower()).strip("-")


def register(
    engine: Engine,
    artifact_root: str,
    onnx_path: Path | str,
    name: str,
    *,
    metrics: dict[str, Any] | None = None,
    training_run: str | None = None,
) -> int:
    """Verify an exported policy, store it by content hash and record a new candidate
    version of `name`; returns the version number."""
    verified = verify_artifact(onnx_path, f"{name} (new version)")
    uri, digest, size = store_artifact(artifact_root, verified.path)
    lineage = verified.lineage
    for _ in range(3):
        try:
            with engine.begin() as conn:
                latest = conn.execute(
                    sa.select(sa.func.max(model_versions.c.version)).where(
                        model_versions.c.name == name
                    )
                ).scalar()
                version = int(latest or 0) + 1
                conn.execute(
                    sa.insert(model_versions).values(
                        name=name,
                        version=version,
                        algorithm=lineage.algorithm,
                        artifact_uri=uri,
                        sha256=digest,
                        size=size,
                        opset=verified.opset,
                        feature_spec=lineage.feature_spec.to_dict(),
                        action_map=list(lineage.action_map),
                        metrics=json.loads(json.dumps(metrics or {})),
                        training_run=training_run or lineage.training_run,
                        status="candidate",
                    )
                )
            return version
        except sa.exc.IntegrityError:
            continue  # another registration took this number; take the next
    raise PromotionConflict(f"could not allocate a version of {name}: too many at once")


def get_version(engine: Engine, name: str, version: int) -> dict[str, Any]:
    """One version as a dict; VersionNotFound names it."""
    with engine.connect() as conn:
        row = (
            conn.execute(
                sa.select(model_versions).where(
                    model_versions.c.name == name, model_versions.c.version == version
                )
            )
            .mappings()
            .first()
        )
    if row is None:
        raise VersionNotFound(
            f"model {name} has no version {version}: python -m pipeline models list"
        )
    return dict(row)


def list_versions(engine: Engine, name: str | None = None) -> list[dict[str, Any]]:
    """Versions, newest first, each with `aliases` it holds."""
    query = sa.select(model_versions).order_by(
        model_versions.c.name, model_versions.c.version.desc()
    )
    if name is not None:
        query = query.where(model_versions.c.name == name)
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(query).mappings()]
        aliases = conn.execute(sa.select(model_aliases)).mappings().all()
    for row in rows:
        row["aliases"] = [
            a["alias"]
            for a in aliases
            if (a["name"], a["version"]) == (row["name"], row["version"])
        ]
    return rows


def load_verified(engine: Engine, name: str, version: int, folder: Path) -> Verified:
    """Fetch and verify a registered version (what promotion and serving do first)."""
    row = get_version(engine, name, version)
    local = fetch_artifact(row["artifact_uri"], folder)
    return verify_artifact(
        local,
        f"{name} v{version}",
        sha256=row["sha256"],
        feature_spec=row["feature_spec"],
        action_map=row["action_map"],
    )


def set_metrics(engine: Engine, name: str, version: int, metrics: dict[str, Any]) -> None:
    """Merge `metrics` into a version's recorded metrics."""
    row = get_version(engine, name, version)
    merged = {**(row["metrics"] or {}), **json.loads(json.dumps(metrics))}
    with engine.begin() as conn:
        conn.execute(
            sa.update(model_versions)
            .where(model_versions.c.name == name, model_versions.c.version == version)
            .values(metrics=merged)
        )
