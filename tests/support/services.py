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


def require_bench_deps(*modules: str) -> None:
    """Skip (fail under CI=true) unless the optional packages of requirements-bench.txt
    that a test drives (Stable-Baselines3, torch, MLflow) are installed."""
    import importlib
    import os

    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        message = f"{', '.join(missing)} not installed: `make bench-deps` installs them"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
