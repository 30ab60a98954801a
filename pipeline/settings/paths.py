"""Where the checkout, its var/ folder and the recorded market data are."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def default_var_dir() -> Path:
    """`./var` of the checkout when running from one, else of the working directory."""
    if (PROJECT_ROOT / "pyproject.toml").exists():
        return PROJECT_ROOT / "var"
    return Path.cwd() / "var"


def default_data_dir() -> Path | None:
    """The recorded market data beside the checkout (`../shared/data`), if it is there."""
    candidate = PROJECT_ROOT.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None
