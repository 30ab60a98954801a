"""The trader's HTTP side: health, readiness, Prometheus metrics and operator control.

`/healthz` answers while the process lives; `/readyz` is 200 only with a model for
every market, fresh data and a reachable database (503 with the reasons otherwise);
`/metrics` is Prometheus text. `POST /control/{pause,resume,flatten}` need
`Authorization: Bearer <serving.control_token>`; without a configured token they
always answer 401.
"""

from __future__ import annotations

import secrets
import socket
import threading
from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI, Header, HTTPException
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import SecretStr


class Served(Protocol):
    """What the HTTP side asks of a trader, whichever its strategy."""

    metrics: Any  # its Prometheus metrics: `.registry`
    risk: Any  # its risk gate: `.snapshot()`

    def status(self) -> dict[str, Any]: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def flatten(self) -> None: ...


def create_app(trader: Served, token: SecretStr | None) -> FastAPI:
    """The trader's HTTP app."""
    app = FastAPI(title="cryptobots trader", docs_url=None, redoc_url=None)

    def authorized(authorization: str | None) -> None:
        scheme, _, given = (authorization or "").partition(" ")
        if (
            token is None
            or scheme.lower() != "bearer"
            or not secrets.compare_digest(given.encode(), token.get_secret_value().encode())
        ):
            raise HTTPException(
                401,
                "control needs Authorization: Bearer <CRYPTOBOTS_SERVING__CONTROL_TOKEN>",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        status = trader.status()
        return JSONResponse(status, status_code=200 if status["ready"] else 503)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(trader.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/control/pause")
    def pause(authorization: str | None = Header(default=None)) -> dict[str, Any]:
        authorized(authorization)
        trader.pause()
        return {"risk": trader.risk.snapshot()}

    @app.post("/control/resume")
    def resume(authorization: str | None = Header(default=None)) -> dict[str, Any]:
        authorized(authorization)
        trader.resume()
        return {"risk": trader.risk.snapshot()}

    @app.post("/control/flatten")
    def flatten(authorization: str | None = Header(default=None)) -> dict[str, Any]:
        authorized(authorization)
        trader.flatten()
        return {"flatten": "requested: positions close on the next step"}

    return app


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) and listening, 0 picking a free port; OSError
    (EADDRINUSE) when another process has the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


class HttpServer:
    """uvicorn in a background thread on a socket `listen` bound (before anything was
    taken or started, so that a port in use is refused first)."""

    def __init__(self, app: FastAPI, sock: socket.socket) -> None:
        self.sock = sock
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, name="http", daemon=True
        )

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self.sock.getsockname()[1])

    def start(self, timeout: float = 10.0) -> int:
        """Start serving; the bound port."""
        self.thread.start()
        waited = threading.Event()
        for _ in range(int(timeout / 0.02)):
            if self.server.started:
                break
            waited.wait(0.02)
        if not self.server.started:
            raise RuntimeError("the trader's HTTP server did not start")
        return self.port

    def stop(self) -> None:
        """Stop and wait for the thread (if it was started); close the socket."""
        self.server.should_exit = True
        if self.thread.ident is not None:
            self.thread.join(timeout=10)
        self.sock.close()
