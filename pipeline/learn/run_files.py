"""Where a training run keeps its files: scratch space on this worker, local copies of
the artifact store's files, and checkpoints mirrored so a retry on another worker resumes.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.models.registry import fetch_artifact
from pipeline.settings import Settings


def run_dir(settings: Settings, run_id: str) -> Path:
    """Where a run keeps its checkpoints, summaries, model and plots on this worker (its
    scratch space: what another task needs goes through the artifact store)."""
    return settings.var_dir / "runs" / run_id


def local_copy(settings: Settings, uri: str | Path, kind: str) -> Path:
    """A file of the artifact store on this worker (itself when the store is a local
    folder, else downloaded once into this worker's scratch space)."""
    return fetch_artifact(str(uri), settings.var_dir / "cache" / kind)


def checkpoint_store(settings: Settings, run_id: str, member: int | None = None) -> str:
    """Where a run's training checkpoints are mirrored in the artifact store (per ensemble
    member), so that a training task retried on another worker resumes from them."""
    folder = f"{settings.artifact_root.rstrip('/')}/checkpoints/{run_id}"
    return folder if member is None else f"{folder}/member-{member}"


def drop_checkpoints(settings: Settings, run_id: str) -> None:
    """Remove a trained run's mirrored checkpoints: its exported policy is what lasts."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(checkpoint_store(settings, run_id))
    if fs.exists(path):
        fs.rm(path, recursive=True)
