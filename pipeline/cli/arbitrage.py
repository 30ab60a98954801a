"""`arbitrage study|scan`: arbitrage on recorded candles and on the venues' live books."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline import arguments as arg
from pipeline.settings import Settings


def add_arbitrage(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`arbitrage study`, `arbitrage scan`."""
    arbitrage = commands.add_parser("arbitrage", help="arbitrage on recorded data")
    arbitrage_commands = arbitrage.add_subparsers(title="arbitrage commands")
    study = arbitrage_commands.add_parser(
        "study",
        help="triangle edges and cross-exchange spreads on stored candles: statistics, PNGs",
    )
    study.add_argument(
        "--days",
        type=arg.positive_int,
        help="days studied per group (default: arbitrage.study_days)",
    )
    study.add_argument(
        "--no-ingest",
        action="store_true",
        help="study what is stored; do not fill the windows from the recorded files first",
    )
    study.add_argument(
        "--threshold-bps",
        type=arg.non_negative_float,
        help="edge after fees that counts (default: arbitrage.study_threshold_bps)",
    )
    study.add_argument(
        "--out",
        type=Path,
        help="report folder (default: <var_dir>/reports/arbitrage/<UTC timestamp>/)",
    )
    study.set_defaults(handler=_arbitrage_study)
    scan = arbitrage_commands.add_parser(
        "scan",
        help="cross-exchange spreads on the venues' live books (report only: nothing is sent)",
    )
    scan.add_argument(
        "--min-spread-bps",
        type=arg.finite_float,
        help="net spread that counts (default: arbitrage.study_threshold_bps)",
    )
    scan.add_argument("--json", action="store_true", help="print JSON instead of text")
    scan.set_defaults(handler=_arbitrage_scan)


def _arbitrage_study(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from pipeline.arbitrage.study_text import render_text
    from pipeline.tasks.arbitrage import study

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or settings.var_dir / "reports" / "arbitrage" / stamp
    report = study(
        settings, out, days=args.days, threshold_bps=args.threshold_bps, ingest=not args.no_ingest
    )
    print()
    print(render_text(report))
    print(f"\nreport: {out / 'report.txt'}, {out / 'report.json'}")
    return 0


def _arbitrage_scan(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.arbitrage.scan import render
    from pipeline.tasks.arbitrage import scan

    report = scan(settings, min_spread_bps=args.min_spread_bps)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0
