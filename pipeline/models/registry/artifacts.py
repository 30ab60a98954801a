"""Model artifacts: stored by content hash, fetched once, verified before any use.

Artifacts live under the artifact root (a folder, or any fsspec URL such as
s3://bucket/models), addressed by their sha256 and written atomically (temporary
name, then rename), so a file is never half there and the same bytes are stored
once. Verification checks the bytes against the registered checksum, runs the ONNX
checker and compares the input/output signature with the FeatureSpec and action map;
a failure is a `ModelRejected` naming the version and the check.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ModelRejected


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
