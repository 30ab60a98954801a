"""The model registry: versions of ONNX policies, the `champion` alias, an audit trail.

Artifacts live under the artifact root (a folder, or any fsspec URL such as
s3://bucket/models), addressed by their sha256 and written atomically (temporary
name, then rename), so a file is never half there and the same bytes are stored
once. Every load (registration, promotion, serving) verifies the bytes against the
registered checksum, runs the ONNX checker and compares the input/output signature
with the FeatureSpec and action map; a failure is a `ModelRejected` naming the
version and the check, and leaves the registry as it was.

Aliases move in one transaction with their audit row. A move names the alias
generation it saw; when another promotion moved the alias in between, the
database matches no row and the loser gets a `PromotionConflict`: exactly one of
two concurrent promotions wins, and nothing is half done.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.db.schema import model_aliases, model_versions, promotion_events
from pipeline.errors import CryptobotsError, ModelRejected

CHAMPION = "champion"
ALIAS_CHANNEL = "cryptobots_alias_moved"
"""Postgres NOTIFY channel: the payload is the model name whose alias moved."""
MOVES = ("promote", "rollback")
"""Audit actions that moved an alias; `reject` rows record a refused promotion."""
REJECT = "reject"


class PromotionConflict(CryptobotsError):
    """Another promotion moved the alias first; nothing was changed by this one."""


class VersionNotFound(CryptobotsError):
    """No such model version."""


def model_name(market: str) -> str:
    """The registry name of a market's models: 'binance:BTC/USDT:1h' -> 'binance-btc-usdt-1h'."""
    return re.sub(r"[^a-z0-9]+", "-", market.lower()).strip("-")


def sha256_of(path: Path | str) -> str:
    """Hex sha256 of a local file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def store_artifact(
    root: str, local: Path, kind: str = "onnx", suffix: str = ".onnx"
) -> tuple[str, str, int]:
    """Copy `local` under `root`/`kind` by content hash, atomically; (uri, sha256, size)."""
    import fsspec

    digest, payload = sha256_of(local), Path(local).read_bytes()
    fs, base = fsspec.core.url_to_fs(root)
    target = f"{base.rstrip('/')}/{kind}/{digest[:2]}/{digest}{suffix}"
    if not fs.exists(target):
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        temporary = f"{target}.tmp-{uuid.uuid4().hex}"
        with fs.open(temporary, "wb") as out:
            out.write(payload)
        fs.mv(temporary, target)
    return fs.unstrip_protocol(target), digest, len(payload)


def fetch_artifact(uri: str, folder: Path) -> Path:
    """A local copy of an artifact (the file itself when it is local), downloaded once
    into `folder` (names are content hashes) and whole or not at all."""
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    fs, path = fsspec.core.url_to_fs(uri)
    if isinstance(fs, LocalFileSystem):
        return Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    local = folder / Path(path).name
    if not local.exists():
        partial = local.with_name(f"{local.name}.tmp-{uuid.uuid4().hex}")
        fs.get(path, str(partial))
        partial.replace(local)
    return local


@dataclass(frozen=True)
class Verified:
    """What a verified artifact holds."""

    path: Path
    sha256: str
    size: int
    opset: int
    lineage: Any


def verify_artifact(
    path: Path | str,
    label: str,
    *,
    sha256: str | None = None,
    feature_spec: dict | None = None,
    action_map: list[float] | None = None,
) -> Verified:
    """Checksum, ONNX checker, metadata and signature; ModelRejected names `label` and the
    failed check."""
    import onnx

    from pipeline.learn.export import INPUT_NAME, read_lineage

    path = Path(path)
    if not path.is_file():
        raise ModelRejected(f"{label}: artifact {path} is missing")
    digest = sha256_of(path)
    if sha256 is not None and digest != sha256:
        raise ModelRejected(
            f"{label}: checksum mismatch (file {digest[:12]}..., registered {sha256[:12]}...): "
            "the artifact was changed or corrupted; re-register it from its training run"
        )
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto, full_check=True)
    except Exception as error:  # onnx raises several unrelated types for bad bytes
        raise ModelRejected(f"{label}: the ONNX checker refuses the file: {error}") from error
    lineage = read_lineage(path)
    inputs = [(i.name, _dims(i)) for i in proto.graph.input]
    width = lineage.feature_spec.dim + 1
    if inputs != [(INPUT_NAME, ["batch", width])]:
        raise ModelRejected(
            f"{label}: input signature {inputs} does not match the feature spec "
            f"(expected [('{INPUT_NAME}', ['batch', {width}])])"
        )
    outputs = [_dims(o) for o in proto.graph.output]
    if len(outputs) != 1 or outputs[0][-1] != len(lineage.action_map):
        raise ModelRejected(
            f"{label}: output signature {outputs} does not give one score per action of "
            f"{list(lineage.action_map)}"
        )
    if feature_spec is not None and lineage.feature_spec.to_dict() != feature_spec:
        raise ModelRejected(f"{label}: the file's feature spec differs from the registered one")
    if action_map is not None and list(lineage.action_map) != list(action_map):
        raise ModelRejected(f"{label}: the file's action map differs from the registered one")
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return Verified(path, digest, path.stat().st_size, opset, lineage)


def _dims(value: Any) -> list[Any]:
    return [
        d.dim_value if d.HasField("dim_value") else "batch"
        for d in value.type.tensor_type.shape.dim
    ]


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
