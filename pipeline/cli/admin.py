"""The commands that set up and inspect an installation: db, doctor, airflow-pools, settings."""

from __future__ import annotations

import argparse
import json

from pipeline.settings import Settings


def add_db(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`db upgrade [REVISION]`, `db current`."""
    db = commands.add_parser("db", help="database schema (Alembic)")
    db_commands = db.add_subparsers(title="db commands")
    upgrade = db_commands.add_parser("upgrade", help="migrate the database (no-op when current)")
    upgrade.add_argument("revision", nargs="?", default="head")
    upgrade.set_defaults(handler=_db_upgrade)
    current = db_commands.add_parser("current", help="print the database's schema revision")
    current.set_defaults(handler=_db_current)


def add_doctor(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`doctor [--json] [--no-gpu-probe]`."""
    doctor = commands.add_parser("doctor", help="check packages, GPU, database, exchanges")
    doctor.add_argument("--json", action="store_true", help="machine-readable report")
    doctor.add_argument(
        "--no-gpu-probe", action="store_true", help="skip importing TensorFlow (faster)"
    )
    doctor.set_defaults(handler=_doctor)


def add_airflow_pools(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`airflow-pools`."""
    pools = commands.add_parser("airflow-pools", help="create the pool of each exchange in Airflow")
    pools.set_defaults(handler=_airflow_pools)


def add_settings(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`settings`."""
    show = commands.add_parser("settings", help="print the effective settings (secrets masked)")
    show.set_defaults(handler=_settings)


def _db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.tasks.database import upgrade

    done = upgrade(settings, args.revision)
    state = (
        "already at"
        if done["before"] == done["after"]
        else f"migrated from {done['before'] or 'empty'} to"
    )
    print(f"database {done['database']}: {state} revision {done['after']}")
    return 0


def _db_current(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.tasks.database import current

    now = current(settings)
    print(f"database {now['database']}: revision {now['revision'] or 'none'} (head {now['head']})")
    return 0


def _doctor(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.ops.doctor import as_dicts, healthy, render, run_checks

    checks = run_checks(settings, gpu=not args.no_gpu_probe)
    print(json.dumps(as_dicts(checks), indent=2) if args.json else render(checks))
    return 0 if healthy(checks) else 1


def _airflow_pools(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.ops.airflow_setup import ensure_pools

    slots = settings.airflow.exchange_pool_slots
    for name in ensure_pools(settings):
        print(f"airflow pool {name}: {slots} slots")
    return 0


def _settings(settings: Settings, args: argparse.Namespace) -> int:
    shown = settings.model_dump(mode="json")
    shown["db_url"] = settings.masked_db_url
    print(json.dumps(shown, indent=2))
    return 0
