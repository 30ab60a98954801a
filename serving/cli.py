"""`python -m serving`: the trader daemon.

Paper trading unless `--live` is given with CRYPTOBOTS_TRADING_MODE=live; live trading
also needs the exchange's keys through its settings reference (env:PREFIX or file:path;
never in settings, never logged). Stops cleanly on SIGTERM/SIGINT: the current step
finishes, exit code 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pipeline.errors import ConfigurationError, CryptobotsError, TemporaryExchangeError
from pipeline.settings import Settings, load_settings
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


def build(settings: Settings, *, live: bool, environ: Mapping[str, str]) -> Any:
    """The trader for `settings`: exchanges, brokers, model watches, risk gate."""
    import onnxruntime as ort

    from pipeline.db.engine import create_engine
    from pipeline.db.migrate import upgrade
    from pipeline.exchanges.client import open_exchange
    from serving.broker import ExchangeBroker, PaperBroker
    from serving.metrics import Metrics
    from serving.model import (
        CUDA,
        AliasNotifications,
        ModelWatch,
        choose_providers,
        usable_providers,
    )
    from serving.risk import RiskGate
    from serving.trader import Trader, cache_dir, traded_markets

    _check_live(settings, live)
    markets = traded_markets(settings)
    engine = create_engine(settings.db_url)
    upgrade(engine)
    exchanges, brokers = {}, {}
    for name in sorted({m.exchange for m in markets}):
        credentials = _live_credentials(settings, name, environ) if live else None
        exchanges[name] = open_exchange(settings, name, credentials)
        brokers[name] = (
            ExchangeBroker(exchanges[name])
            if live
            else PaperBroker(exchanges[name], settings.serving.fee_bps)
        )
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

    from pipeline.registry import model_name

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


def claim(trader: Any, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
    """Take the markets' lease before trading, waiting at most one lease (a killed
    predecessor's runs out by then); LeaseHeld names who holds it, unless this trader
    is a standby, which waits in its loop (and answers /readyz 503 meanwhile)."""
    lease = getattr(trader, "lease", None)
    if lease is None or settings.serving.standby:
        return
    deadline = clock() + lease.ttl_seconds + settings.serving.loop_seconds
    while not lease.acquire():
        if clock() > deadline:
            held = ", ".join(f"{m} by {h}" for m, h in sorted(lease.holders().items()))
            raise LeaseHeld(
                f"the {lease.account} markets are traded by another trader ({held}): stop it, "
                "or start this one as its standby (CRYPTOBOTS_SERVING__STANDBY=true, "
                "serving.standby), which takes over within serving.failover_seconds"
            )
        time.sleep(min(1.0, settings.serving.loop_seconds))


def build_arbitrage(settings: Settings, *, live: bool, environ: Mapping[str, str]) -> Any:
    """The arbitrage trader for `settings.arbitrage`: one exchange, its broker, its gate."""
    from pipeline.db.engine import create_engine
    from pipeline.db.migrate import upgrade
    from pipeline.exchanges.client import open_exchange
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
    exchange = open_exchange(settings, name, credentials)
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
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    parser.add_argument("--live", action="store_true", help="send real orders (needs keys)")
    parser.add_argument(
        "--strategy",
        choices=("model", "arbitrage"),
        default="model",
        help="model: the promoted RL policy per market; arbitrage: cycles inside one exchange "
        "(settings.arbitrage)",
    )
    parser.add_argument(
        "--market", action="append", help="trade this market (repeatable; default: settings)"
    )
    parser.add_argument("--port", type=int, help="HTTP port (health, readiness, metrics)")
    parser.add_argument("--log-format", choices=("json", "text"), default="json")
    args = parser.parse_args(argv)

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if args.log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)

    from serving.http import HttpServer, create_app

    try:
        settings = load_settings()
        serving = settings.serving.model_dump()
        if args.market:
            serving["markets"] = args.market
        if args.port is not None:
            serving["port"] = args.port
        settings = load_settings(serving=serving)
        make = build_arbitrage if args.strategy == "arbitrage" else build
        trader = make(settings, live=args.live, environ=os.environ)
        claim(trader, settings)
    except CryptobotsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    server = HttpServer(
        create_app(trader, settings.serving.control_token),
        settings.serving.host,
        settings.serving.port,
    )
    port = server.start()
    base = f"http://{settings.serving.host}:{port}"
    log.info(
        "trading %s (%s, %s): health %s/healthz, readiness %s/readyz, metrics %s/metrics",
        ", ".join(trader.markets),
        args.strategy,
        trader.account,
        base,
        base,
        base,
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("%s: finishing the current step, then stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        trader.run(stop)
    finally:
        server.stop()
        trader.engine.dispose()
    log.info("stopped")
    return 0
