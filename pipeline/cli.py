"""`python -m pipeline ...`: the command line of the pipeline, usable without Airflow."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from pipeline.errors import CryptobotsError
from pipeline.settings import Settings, load_settings


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run the command, return the exit code. Known errors print one line."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return int(args.handler(load_settings(), args) or 0)
    except CryptobotsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    commands = parser.add_subparsers(title="commands")

    db = commands.add_parser("db", help="database schema (Alembic)")
    db_commands = db.add_subparsers(title="db commands")
    upgrade = db_commands.add_parser("upgrade", help="migrate the database (no-op when current)")
    upgrade.add_argument("revision", nargs="?", default="head")
    upgrade.set_defaults(handler=_db_upgrade)
    current = db_commands.add_parser("current", help="print the database's schema revision")
    current.set_defaults(handler=_db_current)

    doctor = commands.add_parser("doctor", help="check packages, GPU, database, exchanges")
    doctor.add_argument("--json", action="store_true", help="machine-readable report")
    doctor.add_argument(
        "--no-gpu-probe", action="store_true", help="skip importing TensorFlow (faster)"
    )
    doctor.set_defaults(handler=_doctor)

    show = commands.add_parser("settings", help="print the effective settings (secrets masked)")
    show.set_defaults(handler=_settings)
    return parser


def _db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.db.engine import create_engine
    from pipeline.db.migrate import upgrade

    engine = create_engine(settings.db_url)
    before, after = upgrade(engine, args.revision)
    state = "already at" if before == after else f"migrated from {before or 'empty'} to"
    print(f"database {settings.masked_db_url}: {state} revision {after}")
    return 0


def _db_current(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.db.engine import create_engine
    from pipeline.db.migrate import current_revision, head_revision

    current = current_revision(create_engine(settings.db_url))
    print(
        f"database {settings.masked_db_url}: revision {current or 'none'} (head {head_revision()})"
    )
    return 0


def _doctor(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.doctor import as_dicts, healthy, render, run_checks

    checks = run_checks(settings, gpu=not args.no_gpu_probe)
    print(json.dumps(as_dicts(checks), indent=2) if args.json else render(checks))
    return 0 if healthy(checks) else 1


def _settings(settings: Settings, args: argparse.Namespace) -> int:
    shown = settings.model_dump(mode="json")
    shown["db_url"] = settings.masked_db_url
    print(json.dumps(shown, indent=2))
    return 0
