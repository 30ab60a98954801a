"""The model registry: versions of ONNX policies, the `champion` alias, an audit trail.

This module is the package's face: every name the rest of the code imports from
`pipeline.models.registry`. Beside it, one job each: `artifacts` (stored by content
hash, fetched, verified: a failed check is a `ModelRejected` that leaves the registry
as it was), `versions` (register, read, metrics) and `aliases` (atomic alias moves
with their audit rows, refusals, rollback, archiving).
"""

from __future__ import annotations

from pipeline.errors import PromotionConflict, VersionNotFound
from pipeline.models.registry.aliases import (
    ALIAS_CHANNEL,
    CHAMPION,
    MOVES,
    REJECT,
    alias,
    archive,
    move_alias,
    promotion_history,
    record_refusal,
    rollback,
)
from pipeline.models.registry.artifacts import (
    Verified,
    fetch_artifact,
    sha256_of,
    store_artifact,
    verify_artifact,
)
from pipeline.models.registry.versions import (
    get_version,
    list_versions,
    load_verified,
    model_name,
    register,
    set_metrics,
)

__all__ = [
    "ALIAS_CHANNEL",
    "CHAMPION",
    "MOVES",
    "REJECT",
    "PromotionConflict",
    "Verified",
    "VersionNotFound",
    "alias",
    "archive",
    "fetch_artifact",
    "get_version",
    "list_versions",
    "load_verified",
    "model_name",
    "move_alias",
    "promotion_history",
    "record_refusal",
    "register",
    "rollback",
    "set_metrics",
    "sha256_of",
    "store_artifact",
    "verify_artifact",
]
