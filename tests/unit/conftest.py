"""The unit layer touches no network and no database: a test that tries fails at once,
naming the layer it belongs in."""

from __future__ import annotations

import socket
import sqlite3.dbapi2

import psycopg2
import pytest


class NotAUnitTest(RuntimeError):
    """Raised when a unit test opens a network socket or a database."""


def _refuse(what: str) -> NotAUnitTest:
    return NotAUnitTest(f"a unit test opened {what}: move it to tests/integration")


@pytest.fixture(autouse=True)
def _no_network_no_database(monkeypatch: pytest.MonkeyPatch) -> None:
    connect, bind = socket.socket.connect, socket.socket.bind

    def guarded(method):
        def call(self: socket.socket, address: object, *rest: object) -> object:
            if self.family in (socket.AF_INET, socket.AF_INET6):
                raise _refuse(f"a network socket to {address!r}")
            return method(self, address, *rest)

        return call

    def no_database(*args: object, **kwargs: object) -> None:
        raise _refuse("a database connection")

    monkeypatch.setattr(socket.socket, "connect", guarded(connect))
    monkeypatch.setattr(socket.socket, "bind", guarded(bind))
    monkeypatch.setattr(psycopg2, "connect", no_database)
    monkeypatch.setattr(sqlite3.dbapi2, "connect", no_database)
