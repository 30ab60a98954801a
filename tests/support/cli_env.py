"""The environment of a `python -m pipeline ...` or `python -m serving` subprocess over a
test's database: nothing of the outer shell's CRYPTOBOTS_* settings, then these."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import Engine


def pipeline_env(engine: Engine, tmp_path: Path, market: str, **settings: str) -> dict[str, str]:
    """Database, var dir and artifact root under `tmp_path`, one market, then `settings`
    (`training__folds="3"` -> CRYPTOBOTS_TRAINING__FOLDS=3)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOBOTS_")}
    return env | {
        "CRYPTOBOTS_DB_URL": engine.url.render_as_string(hide_password=False),
        "CRYPTOBOTS_VAR_DIR": str(tmp_path / "var"),
        "CRYPTOBOTS_ARTIFACT_ROOT": f"file://{tmp_path / 'artifacts'}",
        "CRYPTOBOTS_MARKETS": f'["{market}"]',
        **{f"CRYPTOBOTS_{key.upper()}": value for key, value in settings.items()},
    }
