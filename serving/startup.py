"""Starting a trader: check the flags and settings, open the exchanges (waiting for one
that does not answer yet), check the markets they list, then build the model trader
(`build`), the arbitrage trader (`build_arbitrage`) or the cross trader (`build_cross`)
and take its markets' lease
(`claim`). `serving.cli` calls these in that order; like it, this module sees both
strategies.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pipeline.errors import ConfigurationError, TemporaryExchangeError
from pipeline.settings import Market, Settings
from serving.kernel.lease import Lease, LeaseHeld

log = logging.getLogger("serving")

EXCHANGE_WAIT_SECONDS = 3.0  # between tries while an exchange does not answer at start
LEASE_SHARE = 2 / 3  # of failover_seconds: renewals every third of it, a poll to spare


class Stopped(Exception):
    """SIGTERM/SIGINT arrived while the trader was still starting."""


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
    from serving.model.trader import traded_markets

    _check_live(settings, live)
    markets = traded_markets(settings)
    named = named or _markets_setting(settings)
    _check_configured(settings, markets, named)
    exchanges, brokers = {}, {}
    for name in sorted({m.exchange for m in markets}):
        credentials = _live_credentials(settings, name, environ) if live else None
        exchanges[name] = connect(settings, name, credentials, stop)
        brokers[name] = _broker(settings, exchanges[name], name, live)
    check_listed(markets, exchanges, named)
    engine = create_engine(settings.db_url)
    upgrade(engine)
    return _model_trader(settings, engine, markets, exchanges, brokers, live)


def _broker(settings: Settings, exchange: Any, name: str, live: bool) -> Any:
    """Paper, spot or (live with `serving.margin`) cross-margin orders on `exchange`;
    a margin broker first checks that the account has margin."""
    from serving.kernel.broker import ExchangeBroker, PaperBroker
    from serving.kernel.margin import MarginBroker

    if not live:
        return PaperBroker(exchange, settings.serving.fee_bps)
    if not settings.serving.margin:
        return ExchangeBroker(exchange)
    broker = MarginBroker(exchange, name)
    broker.check_enabled()
    return broker


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
    from serving.model.metrics import Metrics
    from serving.model.policy import (
        CUDA,
        AliasNotifications,
        ModelWatch,
        choose_providers,
        usable_providers,
    )
    from serving.model.risk import RiskGate
    from serving.model.trader import Trader, cache_dir

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


def build_arbitrage(
    settings: Settings,
    *,
    live: bool,
    environ: Mapping[str, str],
    stop: threading.Event | None = None,
) -> Any:
    """The arbitrage trader for `settings.arbitrage`: one exchange, its broker, its gate
    (Stopped when `stop` is set while the exchange is awaited)."""
    from serving.arbitrage.trader import ArbitrageTrader
    from serving.kernel.broker import ExchangeBroker, PaperBroker

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
    markets = [f"arbitrage:{name}:{symbol}" for symbol in settings.arbitrage.symbols]
    return _leased_start(
        settings, live, markets,
        lambda engine, lease: ArbitrageTrader(settings, engine, exchange, broker, lease=lease),
    )  # fmt: skip


def build_cross(
    settings: Settings,
    *,
    live: bool,
    environ: Mapping[str, str],
    stop: threading.Event | None = None,
) -> Any:
    """The cross trader for `settings.arbitrage.cross_markets`: one exchange and broker
    per venue, the gate, the lease of `cross:<venue>:<symbol>` (Stopped when `stop` is
    set while a venue is awaited). A venue that is not configured is refused, naming
    the market and the setting, before anything is opened."""
    from serving.cross.trader import CrossTrader
    from serving.kernel.broker import ExchangeBroker, PaperBroker

    _check_live(settings, live)
    markets = settings.arbitrage.cross_markets
    for market in markets:
        if market.exchange not in settings.exchanges:
            raise ConfigurationError(
                f"arbitrage.cross_markets: {market.exchange}:{market.symbol}: venue "
                f"{market.exchange!r} is not configured: add it under exchanges (CRYPTOBOTS_"
                f"EXCHANGES__{market.exchange.upper()}__URL=...) or trade venues you have "
                f"({', '.join(sorted(settings.exchanges))}) in CRYPTOBOTS_ARBITRAGE__CROSS_MARKETS"
            )
    fee_bps = settings.arbitrage.taker_fee_bps or settings.serving.fee_bps
    exchanges, brokers = {}, {}
    for market in markets:
        name = market.exchange
        credentials = _live_credentials(settings, name, environ) if live else None
        exchanges[name] = connect(settings, name, credentials, stop)
        brokers[name] = (
            ExchangeBroker(exchanges[name]) if live else PaperBroker(exchanges[name], fee_bps)
        )
    keys = [f"cross:{m.exchange}:{m.symbol}" for m in markets]
    return _leased_start(
        settings, live, keys,
        lambda engine, lease: CrossTrader(settings, engine, exchanges, brokers, lease=lease),
    )  # fmt: skip


def _leased_start(
    settings: Settings, live: bool, markets: list[str], make: Callable[[Any, Lease], Any]
) -> Any:
    """A leg trader made by `make` over the migrated database and its markets' lease,
    started (an exchange that does not answer yet: it starts on the first step)."""
    from pipeline.db.engine import create_engine
    from pipeline.db.migrate import upgrade

    engine = create_engine(settings.db_url)
    upgrade(engine)
    account = "live" if live else "paper"
    lease = Lease(engine, account, markets, LEASE_SHARE * settings.serving.failover_seconds)
    trader = make(engine, lease)
    try:
        trader.start()
    except TemporaryExchangeError as error:
        log.warning("an exchange is not reachable yet, starting on the first step: %s", error)
    return trader


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
    from pipeline.exchanges.client import open_exchange
    from pipeline.exchanges.translation import ExchangeUnreachable

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


def _check_live(settings: Settings, live: bool) -> None:
    if live and settings.trading_mode != "live":
        raise ConfigurationError(
            "--live needs CRYPTOBOTS_TRADING_MODE=live as well: two switches, so that "
            "neither a stray flag nor a stray variable sends real orders"
        )
    if not live and settings.trading_mode == "live":
        log.warning("CRYPTOBOTS_TRADING_MODE=live without --live: trading on paper")


def _live_credentials(settings: Settings, name: str, environ: Mapping[str, str]) -> Any:
    from pipeline.exchanges.factory import credentials_from_reference

    credentials = credentials_from_reference(settings.exchanges[name].credentials, environ)
    if credentials is None:
        raise ConfigurationError(
            f"--live needs API keys for {name}: set CRYPTOBOTS_EXCHANGES__"
            f"{name.upper()}__CREDENTIALS=env:PREFIX (PREFIX_API_KEY, PREFIX_SECRET) "
            "or file:/path/to/keys.yaml"
        )
    return credentials
