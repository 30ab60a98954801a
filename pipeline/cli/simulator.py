"""`simulator`: run the exchange simulator (Binance's or Kraken's spot API) on recorded
candles."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import arguments as arg
from pipeline.errors import ConfigurationError
from pipeline.exchanges.simulator.faults import FAULT_KINDS
from pipeline.settings import Settings


def add_simulator(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`simulator`: its flags are the SimulatorConfig fields."""
    sim = commands.add_parser(
        "simulator", help="run the exchange simulator (Binance's or Kraken's spot API)"
    )
    sim.add_argument("--data", type=Path, help="recorded candles (default CRYPTOBOTS_DATA_DIR)")
    sim.add_argument("--exchange", default="binance", help="which files to serve, by prefix")
    sim.add_argument(
        "--dialect",
        choices=("binance", "kraken"),
        default="binance",
        help="whose REST API it speaks (kraken: ccxt.kraken with its base URL changed)",
    )
    sim.add_argument(
        "--kraken-counter",
        type=arg.counter,
        metavar="LIMIT:DECAY",
        help="with --dialect kraken: Kraken's API counter, e.g. 15:0.33 (Starter); default off",
    )
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=arg.port, default=8900)
    sim.add_argument("--seed", type=arg.non_negative_int, default=0, help="seed of the fault draws")
    sim.add_argument("--shift-to-now", action="store_true", help="history ends now, then replays")
    sim.add_argument(
        "--history-end",
        type=arg.iso_time,
        help="with --shift-to-now: end history at this ISO time, not now, so that a restart "
        "serves the same candles at the same times",
    )
    sim.add_argument(
        "--speed", type=arg.positive_float, default=1.0, help="clock speed (2 = twice real time)"
    )
    sim.add_argument(
        "--weight-budget", type=arg.positive_int, default=6000, help="request weight per minute"
    )
    sim.add_argument("--fault-rate", type=arg.share, default=0.0, help="share of requests faulted")
    sim.add_argument(
        "--faults",
        type=arg.choice_list(FAULT_KINDS),
        default=FAULT_KINDS,
        help=f"comma-separated fault kinds to draw from (default all: {','.join(FAULT_KINDS)})",
    )
    sim.add_argument(
        "--fault-timeout",
        type=arg.positive_float,
        default=5.0,
        help="seconds a timeout fault stalls",
    )
    sim.add_argument(
        "--api-key",
        type=arg.key_secret,
        action="append",
        default=[],
        metavar="KEY:SECRET",
        help="an API key accepted on signed endpoints (repeatable)",
    )
    sim.add_argument("--state-file", type=Path, help="keep balances and orders across restarts")
    sim.add_argument(
        "--consistent-books",
        action="store_true",
        help="centre each cross market's book (ETH/BTC) on its two legs' mids (ETH/USDT, "
        "BTC/USDT), so triangles have no edge beyond the spreads",
    )
    sim.add_argument(
        "--plant",
        type=arg.plant,
        action="append",
        default=[],
        metavar="SYMBOL:BPS:SECONDS",
        help="plant a mispricing from the start, e.g. ETHBTC:40:600 (repeatable; at run "
        "time: POST /sim/plant)",
    )
    sim.add_argument(
        "--balance",
        type=arg.balance,
        action="append",
        default=[],
        metavar="ASSET=AMOUNT",
        help="starting balance of every account (repeatable; default USDT=10000)",
    )
    sim.set_defaults(handler=_simulator)


def _simulator(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.exchanges.simulator.app import SimulatorConfig, serve
    from pipeline.exchanges.simulator.market import Plant

    data = args.data or settings.data_dir
    if data is None:
        raise ConfigurationError("no market data: pass --data DIR or set CRYPTOBOTS_DATA_DIR")
    try:
        config = SimulatorConfig(
            data_dir=Path(data),
            exchange=args.exchange,
            dialect=args.dialect,
            kraken_counter=args.kraken_counter,
            seed=args.seed,
            shift_to_now=args.shift_to_now,
            history_end_ms=args.history_end,
            speed=args.speed,
            weight_budget=args.weight_budget,
            fault_rate=args.fault_rate,
            fault_kinds=tuple(args.faults),
            fault_timeout_seconds=args.fault_timeout,
            api_keys=tuple(args.api_key),
            state_file=args.state_file,
            consistent_books=args.consistent_books,
            plants=tuple(Plant(*spec) for spec in args.plant),
            initial_balances=tuple(args.balance) or (("USDT", 10_000.0),),
        )
        print(
            f"exchange simulator ({args.exchange}, {args.dialect}'s API, {data}) on "
            f"http://{args.host}:{args.port}"
        )
        serve(config, args.host, args.port)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigurationError(f"simulator: {error}") from None
    return 0
