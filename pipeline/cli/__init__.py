"""`python -m pipeline ...`: the command line of the pipeline, usable without Airflow.

This module parses and dispatches: `main` runs one command and turns a known error into
one line. Each command group has its own module holding its parser builder (`add_...`)
and its thin handlers, which call `pipeline/tasks/` (or `pipeline/ops/`) and print:
`admin` (db, doctor, airflow-pools, settings), `simulator`, `backfill`, `train`,
`models`, `deploy` (run, worker), `arbitrage`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline import arguments as arg
from pipeline.cli import admin, arbitrage, backfill, deploy, models, simulator, train
from pipeline.errors import CryptobotsError
from pipeline.settings import load_settings

DESCRIPTION = "`python -m pipeline ...`: the command line of the pipeline, usable without Airflow."


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run the command, return the exit code. Known errors print one line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    import sqlalchemy.exc

    from pipeline.db.migrate import missing_table

    try:
        return int(args.handler(load_settings(), args) or 0)
    except CryptobotsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError) as error:
        table = missing_table(error)
        if table is None:
            raise
        print(
            f"error: the database has no table {table}: it is not migrated to this code's "
            "schema; run: python -m pipeline db upgrade",
            file=sys.stderr,
        )
        return 2


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command, in the order `--help` lists them."""
    parser = arg.Parser(prog="python -m pipeline", description=DESCRIPTION)
    commands = parser.add_subparsers(title="commands")
    admin.add_db(commands)
    admin.add_doctor(commands)
    simulator.add_simulator(commands)
    backfill.add_backfill(commands)
    train.add_train(commands)
    models.add_models(commands)
    deploy.add_run(commands)
    deploy.add_worker(commands)
    arbitrage.add_arbitrage(commands)
    admin.add_airflow_pools(commands)
    admin.add_settings(commands)
    return parser
