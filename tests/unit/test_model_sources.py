"""Where an external model is read from: a path or fsspec URL through the registry's
download, an MLflow URI only with MLflow; an unreadable source is refused by name."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pipeline.errors import ConfigurationError, ModelRejected
from pipeline.models.sources import fetch_source, is_mlflow_uri


def test_a_local_path_is_used_in_place(tmp_path: Path) -> None:
    policy = tmp_path / "policy.onnx"
    policy.write_bytes(b"onnx")
    assert fetch_source(str(policy), tmp_path / "copies") == policy


def test_a_source_that_cannot_be_read_is_refused_naming_it_and_the_fix(tmp_path: Path) -> None:
    source = "memory://desk/missing.onnx"
    with pytest.raises(ModelRejected, match=r"missing\.onnx: could not be read") as no:
        fetch_source(source, tmp_path)
    assert source in str(no.value)
    assert "check the URL and its credentials" in str(no.value)


@pytest.mark.parametrize(
    ("source", "mlflow"),
    [
        ("models:/desk-policy/3", True),
        ("models:/desk-policy@champion", True),
        ("runs:/0a1b/policy/model.onnx", True),
        ("s3://bucket/policy.onnx", False),
        ("/srv/models/models:/odd.onnx", False),
    ],
)
def test_mlflow_uris_are_told_apart_from_paths_and_urls(source: str, mlflow: bool) -> None:
    assert is_mlflow_uri(source) is mlflow


def test_an_mlflow_uri_without_mlflow_installed_names_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    monkeypatch.setitem(sys.modules, "mlflow.artifacts", None)
    with pytest.raises(ConfigurationError, match="needs MLflow, which is not installed") as no:
        fetch_source("models:/desk-policy/3", tmp_path)
    assert "pip install mlflow-skinny" in str(no.value)
    assert "models:/desk-policy/3" in str(no.value)
