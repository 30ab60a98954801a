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
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pipeline.arguments import Parser, market, port
from pipeline.errors import ConfigurationError, CryptobotsError, TemporaryExchangeError
from pipeline.settings import Market, Settings, load_settings
from serving.lease import Lease, LeaseHeld

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


class Stopped(Exception):
    """SIGTERM/SIGINT arrived while the trader was still starting."""


EXCHANGE_WAIT_SECONDS = 3.0  # between tries while an exchange does not answer at start


def build(
    settings: Settings,
    *,
    live: bool,
    environ: Mapping[str, str],
    named: str | None = None,
    stop: threading.Event | None = None,
) -> Any:
    """The trader for `settings`: exchanges, brokers, model watches, risk gate.

    `named`: how the user gave the markets (e.g. --market), for errors; by default the
    setting they came from. Stopped when `stop` is set while an exchange is awaited.
    The exchanges are opened and the markets checked before the database is touched."""
    from pipeline.db.engine import create_engine
    from pipeline.db.migrate import upgrade
    from serving.broker import ExchangeBroker, PaperBroker
    from serving.trader import traded_markets

    _check_live(settings, live)
    markets = traded_markets(settings)
    named = named or _markets_setting(settings)
    _check_configured(settings, markets, named)
    exchanges, brokers = {}, {}
    for name in sorted({m.exchange for m in markets}):
        credentials = _live_credentials(settings, name, environ) if live else None
        exchanges[name] = connect(settings, name, credentials, stop)
        brokers[name] = (
            ExchangeBroker(exchanges[name])
            if live
            else PaperBroker(exchanges[name], settings.serving.fee_bps)
        )
    check_listed(markets, exchanges, named)
    engine = create_engine(settings.db_url)
    upgrade(engine)
    return _model_trader(settings, engine, markets, exchanges, brokers, live)


def _model_trader(
    settings: Settings,
    engine: Any,
    markets: Sequence[Market],
    exchanges: dict[str, Any],
    brokers: dict[str, Any],
    live: bool,
) -> Any:
    """The model trader over opened exchanges: ONNX Runtime, model watches, lease."""
    import onnxruntime as ort

    from pipeline.models.registry import model_name
    from serving.metrics import Metrics
    from serving.model import (
        CUDA,
        AliasNotifications,
        ModelWatch,
        choose_providers,
        usable_providers,
    )
    from serving.risk import RiskGate
    from serving.trader import Trader, cache_dir

    providers = choose_providers(usable_providers())
    offered = ort.get_available_providers()
    log.info(
        "ONNX Runtime runs the models on %s%s",
        providers[0],
        " (its CUDA provider did not load: no GPU or CUDA libraries)"
        if CUDA in offered and CUDA not in providers
        else "",
    )
    metrics = Metrics()
    metrics.db_up.set(1)

    def on_model_event(kind: str, info: dict[str, Any]) -> None:
        if kind == "refused":
            metrics.models_refused.labels(info["name"]).inc()

    watches = {
        model_name(str(m)): ModelWatch(
            engine, model_name(str(m)), cache_dir(settings), providers, on_model_event
        )
        for m in markets
    }
    account = "live" if live else "paper"
    ttl = LEASE_SHARE * settings.serving.failover_seconds
    lease = Lease(engine, account, [str(m) for m in markets], ttl)
    return Trader(
        settings=settings,
        engine=engine,
        exchanges=exchanges,
        brokers=brokers,
        watches=watches,
        risk=RiskGate(settings.serving.risk, [str(m) for m in markets]),
        metrics=metrics,
        notifications=AliasNotifications(engine),
        lease=lease,
    )


LEASE_SHARE = 2 / 3  # of failover_seconds: renewals every third of it, a poll to spare


def claim(
    trader: Any,
    settings: Settings,
    clock: Callable[[], float] = time.monotonic,
    stop: threading.Event | None = None,
) -> None:
    """Take the markets' lease before trading, waiting at most one lease (a killed
    predecessor's runs out by then, and `stop` ends the wait); LeaseHeld names who holds
    it, unless this trader is a standby, which waits in its loop (and answers /readyz
    503 meanwhile)."""
    lease = getattr(trader, "lease", None)
    if lease is None or settings.serving.standby:
        return
    stop = stop or threading.Event()
    deadline = clock() + lease.ttl_seconds + settings.serving.loop_seconds
    while not stop.is_set() and not lease.acquire():
        if clock() > deadline:
            held = ", ".join(f"{m} by {h}" for m, h in sorted(lease.holders().items()))
            raise LeaseHeld(
                f"the {lease.account} markets are traded by another trader ({held}): stop it, "
                "or start this one as its standby (CRYPTOBOTS_SERVING__STANDBY=true, "
                "serving.standby), which takes over within serving.failover_seconds"
            )
        stop.wait(min(1.0, settings.serving.loop_seconds))


def connect(
    settings: Settings, name: str, credentials: Any, stop: threading.Event | None = None
) -> Any:
    """Exchange `name`, opened. While nothing answers at its URL the daemon waits for it:
    a WARNING at once naming the URL and the fix, then a try every EXCHANGE_WAIT_SECONDS;
    Stopped when `stop` is set meanwhile. Other errors are raised as they come."""
    from pipeline.exchanges.client import ExchangeUnreachable, open_exchange

    stop = stop or threading.Event()
    waiting = False
    while not stop.is_set():
        try:
            exchange = open_exchange(settings, name, credentials, patience=0.0)
        except ExchangeUnreachable as error:
            if not waiting:
                log.warning("%s; waiting for it, a try every %g s", error, EXCHANGE_WAIT_SECONDS)
            waiting = True
            stop.wait(EXCHANGE_WAIT_SECONDS)
            continue
        if waiting:
            log.info("%s answers now: starting", name)
        return exchange
    raise Stopped


def check_listed(markets: Sequence[Market], exchanges: Mapping[str, Any], named: str) -> None:
    """ConfigurationError naming `named` for a market whose symbol its exchange does not
    list (the exchanges' markets are loaded)."""
    for wanted in markets:
        listed = exchanges[wanted.exchange].client.markets or {}
        if wanted.symbol not in listed:
            some = ", ".join(_alike(wanted.symbol, listed))
            raise ConfigurationError(
                f"{_typed(named, wanted)}: {wanted.exchange} does not list {wanted.symbol}: "
                f"trade a symbol it lists, e.g. {some}"
            )


def _alike(symbol: str, listed: Mapping[str, Any], count: int = 6) -> list[str]:
    """Up to `count` listed symbols, those sharing a currency with `symbol` first."""
    currencies = set(symbol.split("/"))
    ranked = sorted(listed, key=lambda s: (not currencies & set(s.split("/")), s))
    return ranked[:count]


def _markets_setting(settings: Settings) -> str:
    """The setting the traded markets came from."""
    if settings.serving.markets:
        return "serving.markets (CRYPTOBOTS_SERVING__MARKETS)"
    return "markets (CRYPTOBOTS_MARKETS; the trader trades the first)"


def _typed(named: str, wanted: Market) -> str:
    """`--market binance:X/Y:1h` for a flag, `markets (...): binance:X/Y:1h` for a setting."""
    return f"{named} {wanted}" if named.startswith("--") else f"{named}: {wanted}"


def _check_configured(settings: Settings, markets: Sequence[Market], named: str) -> None:
    for wanted in markets:
        if wanted.exchange not in settings.exchanges:
            raise ConfigurationError(
                f"{_typed(named, wanted)}: exchange {wanted.exchange!r} is not configured: use "
                f"one of {sorted(settings.exchanges)} or add it (CRYPTOBOTS_EXCHANGES__"
                f"{wanted.exchange.upper()}__URL=...)"
            )


def build_arbitrage(
    settings: Settings,
    *,
    live: bool,
    environ: Mapping[str, str],
    stop: threading.Event | None = None,
) -> Any:
    """The arbitrage trader for `settings.arbitrage`: one exchange, its broker, its gate
    (Stopped when `stop` is set while the exchange is awaited)."""
    from pipeline.db.engine import create_engine
    from pipeline.db.migrate import upgrade
    from serving.arbitrage import ArbitrageTrader
    from serving.broker import ExchangeBroker, PaperBroker

    _check_live(settings, live)
    name = settings.arbitrage.exchange
    if name not in settings.exchanges:
        raise ConfigurationError(
            f"arbitrage exchange {name!r} is not configured: add it under exchanges "
            f"(CRYPTOBOTS_EXCHANGES__{name.upper()}__URL=...) or set CRYPTOBOTS_ARBITRAGE__EXCHANGE"
        )
    credentials = _live_credentials(settings, name, environ) if live else None
    exchange = connect(settings, name, credentials, stop)
    broker = (
        ExchangeBroker(exchange)
        if live
        else PaperBroker(exchange, settings.arbitrage.taker_fee_bps or settings.serving.fee_bps)
    )
    engine = create_engine(settings.db_url)
    upgrade(engine)
    markets = [f"arbitrage:{name}:{symbol}" for symbol in settings.arbitrage.symbols]
    account = "live" if live else "paper"
    lease = Lease(engine, account, markets, LEASE_SHARE * settings.serving.failover_seconds)
    trader = ArbitrageTrader(settings, engine, exchange, broker, lease=lease)
    try:
        trader.start()
    except TemporaryExchangeError as error:
        log.warning("exchange not reachable yet, starting on the first step: %s", error)
    return trader


def _check_live(settings: Settings, live: bool) -> None:
    if live and settings.trading_mode != "live":
        raise ConfigurationError(
            "--live needs CRYPTOBOTS_TRADING_MODE=live as well: two switches, so that "
            "neither a stray flag nor a stray variable sends real orders"
        )
    if not live and settings.trading_mode == "live":
        log.warning("CRYPTOBOTS_TRADING_MODE=live without --live: trading on paper")


def _live_credentials(settings: Settings, name: str, environ: Mapping[str, str]) -> Any:
    from pipeline.exchanges.client import credentials_from_reference

    credentials = credentials_from_reference(settings.exchanges[name].credentials, environ)
    if credentials is None:
        raise ConfigurationError(
            f"--live needs API keys for {name}: set CRYPTOBOTS_EXCHANGES__"
            f"{name.upper()}__CREDENTIALS=env:PREFIX (PREFIX_API_KEY, PREFIX_SECRET) "
            "or file:/path/to/keys.yaml"
        )
    return credentials


def main(argv: Sequence[str] | None = None) -> int:
    """Run the trader until SIGTERM/SIGINT; 0 on a clean stop, 2 on a known error."""
    parser = Parser(prog="python -m serving", description=__doc__)
    parser.add_argument("--live", action="store_true", help="send real orders (needs keys)")
    parser.add_argument(
        "--strategy",
        choices=("model", "arbitrage"),
        default="model",
        help="model: the promoted RL policy per market; arbitrage: cycles inside one exchange "
        "(settings.arbitrage)",
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
    from serving.http import HttpServer, create_app

    listener = None
    try:
        settings = _settings(args)
        listener = _listen(settings, args.port is not None, os.environ)
        if args.strategy == "arbitrage":
            trader = build_arbitrage(settings, live=args.live, environ=os.environ, stop=stop)
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
    from serving.http import listen

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
