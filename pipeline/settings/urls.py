"""Database URLs: the one driver mapping, a password never shown, the backends allowed."""

from __future__ import annotations

import re


def normalize_db_url(url: str) -> str:
    """Map plain `postgresql://` (and `postgres://`) URLs to the psycopg2 driver we ship.

    SQLAlchemy 2.1 maps the bare scheme to psycopg 3; the driver in requirements is
    psycopg2, so the scheme is made explicit here, once.
    """
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg2://" + url[len(bare) :]
    return url


def mask_url(url: str) -> str:
    """`url` with its password replaced by ***, safe to print and log."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


def check_db_url(url: str) -> None:
    """Raise ValueError unless `url` is a SQLAlchemy URL of sqlite or postgresql."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(
            f"database URL {mask_url(url)!r} is not valid: write a SQLAlchemy URL such as "
            "sqlite:////abs/path.db or postgresql://user:password@host:5432/dbname"
        ) from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError(
            f"database URL {mask_url(url)!r} uses {parsed.get_backend_name()!r}: "
            "cryptobots supports sqlite and postgresql"
        )
