"""Where a model registered from outside comes from: a local copy of its ONNX file.

A path or any fsspec URL (the registry's own download), or an MLflow model URI
(`models:/name/version`, `models:/name@alias`, `runs:/run-id/path`) when MLflow is
installed: optional, not a dependency (`mlflow-skinny` is enough; `make bench-deps`
installs it). MLflow's tracking server and model registry come from the
`mlflow_tracking_uri` setting, or MLflow's own defaults when it is empty. The model
directory MLflow hands back must hold exactly one .onnx file (what
`mlflow.onnx.log_model` writes).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import ConfigurationError, ModelRejected

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


def is_mlflow_uri(source: str) -> bool:
    """True for the URIs MLflow resolves itself."""
    return source.startswith(MLFLOW_SCHEMES)


def fetch_source(source: str, folder: Path, mlflow_tracking_uri: str = "") -> Path:
    """A local copy of `source`'s ONNX file in `folder` (the file itself when local);
    ModelRejected naming it when it cannot be read, ConfigurationError for an MLflow URI
    without MLflow."""
    if is_mlflow_uri(source):
        return _from_mlflow(source, folder, mlflow_tracking_uri)
    from pipeline.models.registry.artifacts import fetch_artifact

    try:
        return fetch_artifact(source, folder)
    except Exception as error:  # fsspec backends raise their own types
        raise ModelRejected(
            f"external model {source}: could not be read ({type(error).__name__}: {error}); "
            "check the URL and its credentials, or download the file and give its path"
        ) from error


def _from_mlflow(source: str, folder: Path, tracking_uri: str) -> Path:
    try:
        import mlflow.artifacts
    except ImportError as error:
        raise ConfigurationError(
            f"external model {source}: an MLflow model URI needs MLflow, which is not "
            "installed: pip install mlflow-skinny (or make bench-deps), or register the "
            ".onnx file by its path or URL"
        ) from error
    if tracking_uri:  # models:/ URIs resolve through the registry, runs:/ through tracking
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    try:
        fetched = mlflow.artifacts.download_artifacts(source, dst_path=str(folder / "mlflow"))
    except Exception as error:  # MLflow raises its own types and its stores' ones
        raise ModelRejected(
            f"external model {source}: MLflow could not fetch it ({type(error).__name__}: "
            f"{error}); check the URI and the tracking server (mlflow_tracking_uri, "
            "CRYPTOBOTS_MLFLOW_TRACKING_URI)"
        ) from error
    local = Path(fetched)
    if local.is_file():
        return local
    found = sorted(local.rglob("*.onnx"))
    if len(found) != 1:
        raise ModelRejected(
            f"external model {source}: MLflow's copy holds {len(found)} .onnx files "
            f"({[p.name for p in found]}), one is needed: log the policy with "
            "mlflow.onnx.log_model, or give the file's own URI (runs:/<run>/<path>/model.onnx)"
        )
    return found[0]
