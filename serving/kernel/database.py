"""The state database as both traders see it fail."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

DB_ERRORS = (sa.exc.OperationalError, sa.exc.InterfaceError)
"""The errors of a database that does not answer (down, restarting, cut off)."""


def first_line(error: Any) -> str:
    """The first line of a (database) error, at most 300 characters, for a log line."""
    return str(getattr(error, "orig", None) or error).strip().splitlines()[0][:300]
