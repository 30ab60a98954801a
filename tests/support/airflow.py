"""An isolated Airflow over this repository's dags/ and plugins/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.paths import REPO


def airflow_env(home: Path, metadata_url: str | None = None) -> dict[str, str]:
    """Environment of an isolated Airflow over this repo's dags/ and plugins/: the outer
    shell's AIRFLOW*/CRYPTOBOTS_* variables dropped, metadata in SQLite under `home`
    unless `metadata_url` says otherwise."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CRYPTOBOTS_"))}
    return env | {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url or f"sqlite:///{home / 'airflow.db'}",
        "PYTHONPATH": str(REPO / "plugins"),
    }


def migrated_home(home: Path, metadata: Path) -> Path:
    """`home` as `airflow db migrate` would leave it, copied from the session's migrated
    one (the `airflow_metadata` fixture): the SQLite metadata, and the airflow.cfg that
    migration wrote (its generated JWT secret and keys) with the template's paths made
    `home`'s; `home`."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(metadata, home / "airflow.db")
    template = metadata.parent
    config = (template / "airflow.cfg").read_text()
    for path in {str(template.resolve()), str(template)}:
        config = config.replace(path, str(home))
    (home / "airflow.cfg").write_text(config)
    return home


def run_python(code: str, env: dict[str, str], timeout: int = 600) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON line last."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
