"""Services a test needs from the machine: missing, the test fails at once naming the
service and the command that installs or starts it, instead of hanging until CI's limit."""

from __future__ import annotations

import pytest
import redis

REDIS_FIX = "start it (`service redis-server start`) or install it (`apt-get install redis-server`)"


def require_redis(url: str) -> None:
    """Fail the test now unless Redis answers at `url`."""
    try:
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except redis.RedisError as error:
        pytest.fail(f"Redis at {url} does not answer ({error}): {REDIS_FIX}", pytrace=False)
