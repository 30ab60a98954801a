"""`python -m pipeline`: db upgrade, doctor and settings, as a user runs them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from pipeline.cli import main
from tests.support.paths import REPO


def doctor_report(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    code = main(["doctor", "--json", *args])
    checks = json.loads(capsys.readouterr().out)
    return code, {check["name"]: check for check in checks}


def test_db_upgrade_migrates_once_then_is_a_no_op(sqlite_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOBOTS_")}
    env["CRYPTOBOTS_DB_URL"] = sqlite_url
    command = [sys.executable, "-m", "pipeline", "db", "upgrade"]
    first = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, check=True)
    again = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, check=True)
    assert "migrated from empty to revision" in first.stdout
    assert "already at revision" in again.stdout


def test_doctor_is_healthy_on_a_migrated_embedded_database(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    code, checks = doctor_report(capsys)
    assert code == 0
    assert checks["database"]["status"] == "ok"
    assert "(head)" in checks["database"]["detail"]
    assert checks["pkg tensorflow"]["status"] == "ok"
    assert checks["tensorflow gpu"]["status"] in ("ok", "warn")
    assert "CPUExecutionProvider" in checks["onnxruntime"]["detail"]


def test_doctor_names_the_fix_when_the_database_is_not_migrated(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, checks = doctor_report(capsys, "--no-gpu-probe")
    assert code == 1
    assert checks["database"]["status"] == "FAIL"
    assert "python -m pipeline db upgrade" in checks["database"]["fix"]


def test_a_command_on_an_unmigrated_database_names_the_fix(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "list"]) == 2
    error = capsys.readouterr().err
    assert "the database has no table model_versions" in error
    assert "python -m pipeline db upgrade" in error


@pytest.mark.postgres
def test_a_command_on_an_unmigrated_postgres_database_names_the_fix(
    fresh_pg, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.db.migrate import downgrade

    engine = fresh_pg()
    downgrade(engine, "base")
    monkeypatch.setenv("CRYPTOBOTS_DB_URL", engine.url.render_as_string(hide_password=False))
    assert main(["models", "list"]) == 2
    error = capsys.readouterr().err
    assert "the database has no table model_versions" in error
    assert "python -m pipeline db upgrade" in error


@pytest.mark.postgres
def test_doctor_fails_on_an_unreachable_database_with_the_password_masked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CRYPTOBOTS_DB_URL", "postgresql://trader:hunter2@127.0.0.1:1/cb")
    code, checks = doctor_report(capsys, "--no-gpu-probe")
    assert code == 1
    assert checks["database"]["status"] == "FAIL"
    assert "trader:***@127.0.0.1:1/cb" in checks["database"]["detail"]
    assert "hunter2" not in json.dumps(checks)


def test_doctor_warns_when_an_exchange_url_does_not_answer(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CRYPTOBOTS_EXCHANGES__BINANCE__URL", "http://127.0.0.1:1")
    main(["db", "upgrade"])
    capsys.readouterr()
    code, checks = doctor_report(capsys, "--no-gpu-probe")
    assert code == 0
    assert checks["exchange binance"]["status"] == "warn"
    assert "CRYPTOBOTS_EXCHANGES__BINANCE__URL" in checks["exchange binance"]["fix"]


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a GPU")
def test_doctor_fails_without_a_gpu_when_one_is_required(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CRYPTOBOTS_REQUIRE_GPU", "true")
    main(["db", "upgrade"])
    capsys.readouterr()
    code, checks = doctor_report(capsys, "--no-gpu-probe")
    assert code == 1
    assert checks["onnxruntime"]["status"] == "FAIL"
