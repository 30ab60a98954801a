"""The launcher's state file (`var/run/state.json`), kept across runs: the simulator's
history end (so that a later run serves the same candles at the same times) and the
model the first run bootstrapped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def load_state(path: Path) -> dict[str, Any]:
    """The state saved at `path`; empty before the first run."""
    return json.loads(path.read_text()) if path.exists() else {}


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` (its folder created if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=2))
