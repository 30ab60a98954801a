"""pipeline.ops.preload: the tasks' modules imported once in the process that forks them."""

from __future__ import annotations

import logging
import sys

import pytest
from celery.signals import import_modules

from pipeline.ops import preload as preload_module
from pipeline.ops.preload import TASK_MODULES, preload, scheduler_forks_tasks


def test_preload_imports_the_modules_it_is_given() -> None:
    sys.modules.pop("colorsys", None)
    done = preload(["colorsys"])
    assert done.loaded == ("colorsys",)
    assert "colorsys" in sys.modules
    assert done.failed == {}


def test_a_module_that_fails_to_import_is_named_in_one_warning_and_the_rest_still_load(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="cryptobots.preload"):
        done = preload(["cryptobots_no_such_module", "colorsys"], where="a test worker")
    assert done.loaded == ("colorsys",)
    assert list(done.failed) == ["cryptobots_no_such_module"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "cryptobots_no_such_module (ModuleNotFoundError" in warnings[0]
    assert "a test worker" in warnings[0]


def test_a_module_whose_import_raises_does_not_stop_the_preload(tmp_path, monkeypatch) -> None:
    (tmp_path / "cryptobots_broken_module.py").write_text("raise RuntimeError('half installed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    done = preload(["cryptobots_broken_module", "colorsys"])
    assert done.failed == {"cryptobots_broken_module": "RuntimeError: half installed"}
    assert done.loaded == ("colorsys",)


def test_a_python_thread_left_running_by_an_import_is_named(
    tmp_path, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "cryptobots_threaded_module.py").write_text(
        "import threading\n"
        "stop = threading.Event()\n"
        "threading.Thread(target=stop.wait, name='cryptobots-poller', daemon=True).start()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="cryptobots.preload"):
        done = preload(["cryptobots_threaded_module"])
    sys.modules["cryptobots_threaded_module"].stop.set()
    assert done.new_threads == ("cryptobots-poller",)
    assert "cryptobots-poller" in caplog.text


def test_pipelines_own_modules_are_never_preloaded_so_tasks_run_the_code_as_it_is_now() -> None:
    assert not [name for name in TASK_MODULES if name.split(".")[0] == "pipeline"]


def test_tensorflow_is_never_preloaded() -> None:
    roots = {name.split(".")[0] for name in TASK_MODULES}
    assert not roots & {"tensorflow", "keras", "tf2onnx"}


@pytest.mark.parametrize(
    ("component", "argv", "executor", "forks"),
    [
        ("Job", ["/venv/bin/airflow", "scheduler"], "LocalExecutor", True),
        ("Job", ["/venv/bin/airflow", "scheduler"], "CeleryExecutor", False),
        ("TaskRunnerMarker", ["/venv/bin/airflow", "scheduler"], "LocalExecutor", False),
        ("Job", ["/venv/bin/airflow", "triggerer"], "LocalExecutor", False),
        ("Job", ["/venv/bin/airflow", "dag-processor"], "LocalExecutor", False),
        ("Job", ["/venv/bin/airflow", "standalone"], "LocalExecutor", False),
        ("Job", ["/venv/bin/airflow"], "LocalExecutor", False),
    ],
)
def test_only_a_scheduler_whose_local_executor_forks_the_tasks_preloads(
    component: str, argv: list[str], executor: str, forks: bool
) -> None:
    assert scheduler_forks_tasks(component, argv, executor) is forks


def test_a_celery_worker_preloads_when_celery_imports_its_modules(monkeypatch) -> None:
    from pipeline.ops import celery_config

    assert "broker_url" in celery_config.CELERY_CONFIG
    monkeypatch.setattr(preload_module, "TASK_MODULES", ("colorsys",))
    sys.modules.pop("colorsys", None)
    import_modules.send(sender=None)
    assert "colorsys" in sys.modules


def test_a_celery_worker_with_the_preload_off_imports_nothing(monkeypatch) -> None:
    from pipeline.ops import celery_config  # noqa: F401  (connects the signal)

    monkeypatch.setenv("CRYPTOBOTS_AIRFLOW__PRELOAD", "false")
    monkeypatch.setattr(preload_module, "TASK_MODULES", ("colorsys",))
    sys.modules.pop("colorsys", None)
    import_modules.send(sender=None)
    assert "colorsys" not in sys.modules
