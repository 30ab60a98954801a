"""What the pages cryptobots adds to the Airflow UI share: the templates, a FastAPI app
behind Airflow's auth check, and a database dependency that answers 503 when it is down."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import sqlalchemy as sa
from fastapi import Depends, FastAPI, HTTPException
from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy.engine import Engine

from pipeline.errors import ConfigurationError


@cache
def templates() -> Environment:
    """The Jinja environment over pipeline/ui/templates (HTML autoescaped)."""
    return Environment(
        loader=PackageLoader("pipeline.ui", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def page_app(title: str, guard: Callable[..., Any] | None) -> FastAPI:
    """A FastAPI app whose every route runs `guard` first (Airflow's auth check in the
    plugin); without one the app is open, which only tests and local tools should use."""
    return FastAPI(
        title=title,
        dependencies=[Depends(guard)] if guard is not None else [],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )


def connected_engine(get_engine: Callable[[], Engine], what: str) -> Callable[[], Engine]:
    """A function returning a connected engine, or raising HTTP 503 naming `what`."""

    def connected() -> Engine:
        try:
            engine = get_engine()
            with engine.connect():
                return engine
        except (ConfigurationError, sa.exc.OperationalError) as error:
            reason = getattr(error, "orig", None) or error
            raise HTTPException(503, f"{what} is unreachable: {reason}") from None

    return connected
