"""The step loop of a leg-trading daemon (the arbitrage and cross traders): step until
stopped, every database or exchange error logged and outlived, the lease renewed
meanwhile and handed back at the end, so a standby takes over at once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from pipeline.errors import CryptobotsError
from serving.kernel.database import DB_ERRORS
from serving.kernel.lease import Lease, Renewer


def run_steps(
    step: Callable[[], object],
    stop: threading.Event,
    *,
    poll_seconds: float,
    lease: Lease | None,
    db_up: Callable[[bool], None],
    log: logging.Logger,
) -> None:
    """Call `step` every `poll_seconds` until `stop` is set; the current step always
    finishes. `db_up(False)` after a database error (the step will reconcile again),
    `db_up(True)` after a step that reached the database."""
    if lease is not None:
        Renewer(lease, stop).start()
    try:
        while not stop.is_set():
            try:
                step()
                db_up(True)
            except DB_ERRORS as error:
                db_up(False)
                log.error("database unavailable: %s", str(error).splitlines()[0][:300])
            except CryptobotsError as error:
                log.warning("step skipped: %s", error)
            except Exception:  # a daemon logs what it did not foresee and goes on
                log.exception("step failed, going on")
            stop.wait(poll_seconds)
    finally:
        if lease is not None:
            try:
                lease.release()  # a standby takes over now, not a lease later
            except DB_ERRORS as error:
                log.error("lease not released, the database is down: %s", error)
