"""A service a test needs and the machine lacks fails the test at once, naming the fix."""

from __future__ import annotations

import time

import pytest

from tests.support.services import require_redis


def test_a_redis_that_does_not_answer_fails_at_once_naming_the_fix() -> None:
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match=r"Redis at redis://127\.0\.0\.1:1/0.*apt-get"):
        require_redis("redis://127.0.0.1:1/0")
    assert time.monotonic() - started < 10
