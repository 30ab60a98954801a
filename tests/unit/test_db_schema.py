"""Database URLs: a malformed one names the setting before anything connects."""

from __future__ import annotations

import pytest

from pipeline.db.engine import create_engine
from pipeline.errors import ConfigurationError


def test_invalid_url_names_the_setting() -> None:
    with pytest.raises(ConfigurationError, match="CRYPTOBOTS_DB_URL"):
        create_engine("::not-a-url::")
