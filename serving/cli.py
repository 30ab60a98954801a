"""`python -m serving`: the trader daemon.

Paper trading unless `--live` is given with CRYPTOBOTS_TRADING_MODE=live; live trading
also needs the exchange's keys through its settings reference (env:PREFIX or file:path;
never in settings, never logged). Every flag and setting is checked before anything is
taken or started: the HTTP port is bound first, then the exchanges are opened (an
exchange that does not answer yet is waited for, with a warning naming the fix) and the
markets checked against what they list, then the lease is taken. Stops cleanly on
SIGTERM/SIGINT at any moment, waiting included: the current step finishes, exit code 0.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.arguments import Parser, market, port
from pipeline.errors import ConfigurationError, CryptobotsError
from pipeline.settings import Settings, load_settings
from serving.startup import Stopped, build, build_arbitrage, build_cross, claim

log = logging.getLogger("serving")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(entry)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the trader until SIGTERM/SIGINT; 0 on a clean stop, 2 on a known error."""
    parser = Parser(prog="python -m serving", description=__doc__)
    parser.add_argument("--live", action="store_true", help="send real orders (needs keys)")
    parser.add_argument(
        "--strategy",
        choices=("model", "arbitrage", "cross"),
        default="model",
        help="model: the promoted RL policy per market; arbitrage: cycles inside one exchange "
        "(settings.arbitrage); cross: one asset bought on one venue and sold on another at "
        "once (settings.arbitrage.cross_markets)",
    )
    parser.add_argument(
        "--market",
        action="append",
        type=market,
        help="trade this market, exchange:BASE/QUOTE:timeframe (repeatable; default: settings)",
    )
    parser.add_argument(
        "--port", type=port, help="HTTP port (health, readiness, metrics); 0: any free one"
    )
    parser.add_argument("--log-format", choices=("json", "text"), default="json")
    args = parser.parse_args(argv)
    if args.market and args.strategy == "arbitrage":
        parser.error(
            "argument --market: the arbitrage trader trades settings.arbitrage.symbols: set "
            "CRYPTOBOTS_ARBITRAGE__SYMBOLS instead, or drop --strategy arbitrage"
        )
    if args.market and args.strategy == "cross":
        parser.error(
            "argument --market: the cross trader trades settings.arbitrage.cross_markets: set "
            "CRYPTOBOTS_ARBITRAGE__CROSS_MARKETS instead, or drop --strategy cross"
        )

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if args.log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("%s: finishing the current step, then stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _serve(args, stop)
    finally:
        for sig, handler_before in previous.items():
            signal.signal(sig, handler_before)


def _serve(args: Any, stop: threading.Event) -> int:
    """Check, build, claim, then trade until `stop`; the exit code."""
    from serving.kernel.http import HttpServer, create_app

    listener = None
    try:
        settings = _settings(args)
        listener = _listen(settings, args.port is not None, os.environ)
        if args.strategy == "arbitrage":
            trader = build_arbitrage(settings, live=args.live, environ=os.environ, stop=stop)
        elif args.strategy == "cross":
            trader = build_cross(settings, live=args.live, environ=os.environ, stop=stop)
        else:
            named = "--market" if args.market else None
            trader = build(settings, live=args.live, environ=os.environ, named=named, stop=stop)
        claim(trader, settings, stop=stop)
    except Stopped:
        _close(listener)
        log.info("stopped")
        return 0
    except CryptobotsError as error:
        _close(listener)
        print(f"error: {error}", file=sys.stderr)
        return 2

    server = HttpServer(create_app(trader, settings.serving.control_token), listener)
    if not stop.is_set():
        server.start()
        base = f"http://{settings.serving.host}:{server.port}"
        log.info(
            "trading %s (%s, %s): health %s/healthz, readiness %s/readyz, metrics %s/metrics",
            ", ".join(trader.markets),
            args.strategy,
            trader.account,
            base,
            base,
            base,
        )
    try:
        trader.run(stop)  # returns at once when stopped meanwhile, handing the lease back
    finally:
        server.stop()
        trader.engine.dispose()
    log.info("stopped")
    return 0


def _close(listener: socket.socket | None) -> None:
    if listener is not None:
        listener.close()


def _settings(args: Any) -> Settings:
    """The settings with the flags applied (they override the settings' markets and port)."""
    settings = load_settings()
    serving = settings.serving.model_dump()
    if args.market:
        serving["markets"] = [str(m) for m in args.market]
    if args.port is not None:
        serving["port"] = args.port
    return load_settings(serving=serving)


def _listen(settings: Settings, flagged: bool, environ: Mapping[str, str]) -> socket.socket:
    """The HTTP socket, bound before anything is taken or started; ConfigurationError
    naming the flag or setting the port came from when it cannot be."""
    from serving.kernel.http import listen

    host, number = settings.serving.host, settings.serving.port
    try:
        return listen(host, number)
    except OSError as error:
        if flagged:
            named, fix = f"--port {number}", "pass another --port"
        elif "CRYPTOBOTS_SERVING__PORT" in environ:
            named, fix = f"CRYPTOBOTS_SERVING__PORT={number}", "set another one"
        else:
            named = f"serving.port {number}"
            fix = "pass --port or set CRYPTOBOTS_SERVING__PORT (serving.port)"
        if error.errno == errno.EADDRINUSE:
            raise ConfigurationError(
                f"{named}: port {number} on {host} is in use (another trader or program "
                f"listens there): stop that one, or {fix} (0 picks a free port)"
            ) from None
        raise ConfigurationError(
            f"{named}: cannot listen on {host}:{number} ({error.strerror}): {fix}, or fix "
            "serving.host (CRYPTOBOTS_SERVING__HOST)"
        ) from None
