"""deploy/helm/values.yaml against the tested Celery deployment: one worker set per queue
of pipeline/ops/deployment.py's workers, with the same number of task slots."""

from __future__ import annotations

from pathlib import Path

from pipeline.settings import Settings
from tests.support.helm import concurrency, queues, values, worker_sets


def test_worker_sets_match_the_tested_deployments_workers(tmp_path: Path) -> None:
    """One worker set per queue of the tested deployment, with its number of task slots."""
    from pipeline.ops.deployment import processes

    settings = Settings(var_dir=tmp_path, airflow={"executor": "celery"})
    tested = {}
    for process in processes(settings):
        if process.argv[1:3] == ["celery", "worker"]:
            argv = process.argv
            queue = argv[argv.index("--queues") + 1]
            tested[queue] = int(argv[argv.index("--concurrency") + 1])
    ours = {",".join(queues(s)): concurrency(values(), s) for s in worker_sets(values()).values()}
    assert ours == tested
