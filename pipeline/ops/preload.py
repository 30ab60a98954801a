"""Import what Airflow tasks need once, in the process that forks them.

Airflow 3 runs every task in a process forked (a bare `os.fork()` on Linux) from the
executor's worker: LocalExecutor's workers are forked from the scheduler when the
executor starts, a Celery worker's pool processes from the worker's main process. A
module imported there before the fork is in every task already, so a task pays for its
work, not for importing pandas, ccxt and Great Expectations again (about 12 s of CPU).

Only libraries are preloaded, never `pipeline`'s own modules (0.4 s in all once the
libraries are in; the settings module that says whether to preload is the exception):
a task runs the code of `pipeline/` as it is when the task starts, as without a
preload, and Airflow needs a restart only to upgrade a library. Nothing that holds a
Python thread, a socket or a database connection is made before the fork: engines,
exchange clients and the Great Expectations context are made in the task process (the
context once per process, `pipeline.data.validate`). The OS threads of OpenBLAS's pool
(numpy) are the one thing that exists at import; OpenBLAS shuts its pool down around a
fork itself, and Airflow's own Celery preload imports numpy the same way. TensorFlow is
not preloaded: its runtime is not fork-safe once initialised, and only the training
tasks need it.

Where it runs: `plugins/cryptobots_preload.py` (a listener's `on_starting`, in the
scheduler when the executor is LocalExecutor) and `pipeline.ops.celery_config`
(Celery's `import_modules` signal, in every Celery worker). `airflow.preload=false`
turns both off. A module that fails to import never stops the process: one warning
names it, and tasks import it themselves as before.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

log = logging.getLogger("cryptobots.preload")

TASK_MODULES: tuple[str, ...] = (
    "numpy",
    "pandas",
    "pyarrow",
    "scipy.stats",
    "pydantic_settings",
    "sqlalchemy",
    "psycopg2",
    "ccxt",
    "great_expectations",
    "great_expectations.expectations",
    "onnxruntime",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
)
"""The libraries the DAGs' tasks import, never TensorFlow, and never `pipeline` itself
(see the module doc)."""


@dataclass(frozen=True)
class Preloaded:
    """What one preload did: modules imported, modules that failed (with the error), the
    seconds it took, and Python threads it left running (there should be none)."""

    loaded: tuple[str, ...]
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    new_threads: tuple[str, ...] = ()


def preload(modules: Sequence[str] | None = None, *, where: str = "this process") -> Preloaded:
    """Import `modules` (default `TASK_MODULES`) now; log one line of what it took, and
    one warning naming any module that failed or any Python thread an import left running."""
    modules = TASK_MODULES if modules is None else modules
    started = time.perf_counter()
    threads_before = {thread.ident for thread in threading.enumerate()}
    loaded: list[str] = []
    failed: dict[str, str] = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as error:  # a missing or broken module must not stop the worker
            failed[name] = f"{type(error).__name__}: {error}"
        else:
            loaded.append(name)
    new_threads = tuple(
        thread.name for thread in threading.enumerate() if thread.ident not in threads_before
    )
    result = Preloaded(tuple(loaded), failed, time.perf_counter() - started, new_threads)
    log.info(
        "preloaded %d modules for the tasks %s forks in %.1f s",
        len(result.loaded),
        where,
        result.seconds,
    )
    if failed:
        log.warning(
            "preload: could not import %s in %s; tasks import what they need themselves, "
            "as without a preload (install the module on this worker to preload it)",
            "; ".join(f"{name} ({error})" for name, error in failed.items()),
            where,
        )
    if new_threads:
        log.warning(
            "preload: importing left Python threads running in %s (%s): they do not "
            "survive the fork into a task; drop the module that starts them from "
            "pipeline.ops.preload.TASK_MODULES",
            where,
            ", ".join(new_threads),
        )
    return result


def scheduler_forks_tasks(component: str, argv: Sequence[str], executor: str) -> bool:
    """Whether the `component` starting (the class name a listener's `on_starting` is
    given) is the job of a scheduler whose executor forks the tasks from it: `airflow
    scheduler` (also what `airflow standalone` starts) with LocalExecutor. A task process
    forked from that scheduler keeps its argv, but starts a `TaskRunnerMarker`."""
    return (
        component == "Job"
        and len(argv) > 1
        and argv[1] == "scheduler"
        and "LocalExecutor" in executor
    )
