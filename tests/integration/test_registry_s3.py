"""An S3 artifact root (`CRYPTOBOTS_ARTIFACT_ROOT=s3://...`), against a local S3 server
(moto's), through s3fs exactly as production would reach AWS."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from pipeline.errors import ModelRejected
from pipeline.models.registry import load_verified, register
from tests.support.policies import exported_policy

BUCKET = "cryptobots-artifacts"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_root(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """s3://<bucket>/models on the local server; AWS_* as an instance role would give."""
    import s3fs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    yield f"s3://{BUCKET}/models"
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def engine(fresh_pg) -> Engine:
    return fresh_pg()


def test_a_version_registered_to_s3_loads_back_verified(
    engine: Engine, s3_root: str, tmp_path: Path
) -> None:
    onnx_file = exported_policy(tmp_path, seed=1)
    version = register(engine, s3_root, onnx_file, "s3-model")
    verified = load_verified(engine, "s3-model", version, tmp_path / "fetched")
    assert verified.path.read_bytes() == onnx_file.read_bytes()
    assert verified.path.parent == tmp_path / "fetched"


def test_an_artifact_changed_in_the_bucket_is_refused(
    engine: Engine, s3_root: str, tmp_path: Path
) -> None:
    import s3fs
    import sqlalchemy as sa

    version = register(engine, s3_root, exported_policy(tmp_path, seed=2), "s3-tampered")
    with engine.connect() as conn:
        uri = conn.execute(
            sa.text("SELECT artifact_uri FROM model_versions WHERE name = 's3-tampered'")
        ).scalar_one()
    assert uri.startswith(f"s3://{BUCKET}/models/onnx/")
    fs = s3fs.S3FileSystem()
    payload = fs.cat(uri)
    fs.pipe(uri, payload[:-64] + b"\0" * 64)
    with pytest.raises(ModelRejected, match="checksum mismatch"):
        load_verified(engine, "s3-tampered", version, tmp_path / "fetched")
