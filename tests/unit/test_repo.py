"""The repository's contracts: pinned environments, a slim serving set, light imports."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO

REQUIREMENTS = ["requirements.txt", "requirements-gpu.txt", "serving/requirements.txt"]
HEAVY = ["tensorflow", "airflow", "great_expectations", "onnx", "tf2onnx", "ccxt", "pandas"]


def pins(path: Path) -> dict[str, str]:
    result = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            match = re.fullmatch(r"([A-Za-z0-9_.\-\[\],]+)==([^\s;]+)(\s*;.*)?", line)
            assert match, f"{path.name}: {line!r} is not pinned as name==version"
            result[match.group(1).lower()] = match.group(2)
    return result


@pytest.mark.parametrize("name", REQUIREMENTS)
def test_requirements_files_are_fully_pinned(name: str) -> None:
    assert len(pins(REPO / name)) > 10


def test_serving_requirements_have_no_tensorflow_airflow_or_great_expectations() -> None:
    serving = pins(REPO / "serving/requirements.txt")
    heavy = [p for p in serving if p.startswith(("tensorflow", "apache-airflow", "great-exp"))]
    assert heavy == []
    assert "onnxruntime-gpu" in serving


@pytest.mark.parametrize("name", ["requirements-gpu.txt", "serving/requirements.txt"])
def test_other_environments_use_the_main_pins(name: str) -> None:
    main, other = pins(REPO / "requirements.txt"), pins(REPO / name)
    differ = {p: (main[p], v) for p, v in other.items() if p in main and main[p] != v}
    assert differ == {}


def test_light_modules_import_nothing_heavy() -> None:
    code = (
        "import sys, pipeline.settings, pipeline.cli, pipeline.db.upsert, pipeline.db.migrate, "
        "pipeline.ops.doctor, pipeline.learn.features, pipeline.learn.evaluate, serving; "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_readme_quickstart_is_make_run_then_make_test() -> None:
    readme = (REPO / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in quickstart.splitlines()[1:]]
    assert [c for c in commands if c] == ["make run", "make test"]


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (REPO / ".ci/run").read_text()


def test_no_test_module_imports_another() -> None:
    """Test modules share builders through tests/support, never through each other."""
    offenders = {}
    for path in sorted((REPO / "tests").rglob("*.py")):
        if "support" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith("tests.") and not name.startswith("tests.support"):
                    offenders.setdefault(str(path.relative_to(REPO)), []).append(name)
    assert offenders == {}


def test_every_test_sits_in_a_layer() -> None:
    """tests/ holds only the layers, the builders and the fixtures; no loose test modules."""
    loose = sorted(p.name for p in (REPO / "tests").glob("test_*.py"))
    assert loose == []


def imported_modules(path: Path) -> list[str]:
    """Every module a file imports, `from serving import x` naming `serving.x`."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


@pytest.mark.parametrize(
    ("package", "others"),
    [
        ("model", ("serving.arbitrage", "serving.cross")),
        ("arbitrage", ("serving.model", "serving.cross")),
        ("cross", ("serving.model", "serving.cli", "serving.startup")),
        (
            "kernel",
            (
                "serving.model",
                "serving.arbitrage",
                "serving.cross",
                "serving.cli",
                "serving.startup",
            ),
        ),
    ],
)
def test_serving_strategies_share_only_the_kernel(package: str, others: tuple[str, ...]) -> None:
    """No strategy imports the model trader's package or the entry point, the model and
    arbitrage traders never the other strategies, and the kernel none: only the entry
    point sees them all. (The cross trader keeps its trades in the arbitrage trader's
    tables, through its store and gate.)"""
    offenders = {}
    for path in sorted((REPO / "serving" / package).rglob("*.py")):
        for name in imported_modules(path):
            if any(name == other or name.startswith(f"{other}.") for other in others):
                offenders.setdefault(str(path.relative_to(REPO)), []).append(name)
    assert offenders == {}
    assert list((REPO / "serving" / package).glob("*.py")), f"serving/{package}/ holds no module"


def test_serving_has_no_relative_imports() -> None:
    """Absolute imports only, so the strategy boundary above sees every import."""
    relative = sorted(
        str(path.relative_to(REPO))
        for path in (REPO / "serving").rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.level > 0
    )
    assert relative == []


EVALUATION_PATH = [
    "pipeline/learn/prepare.py",
    "pipeline/learn/onnx_evaluation.py",
    "pipeline/learn/selection.py",
    "pipeline/learn/snapshot.py",
    "pipeline/learn/rl/arrays.py",
]


@pytest.mark.parametrize("module", EVALUATION_PATH)
def test_the_train_dags_evaluation_path_never_imports_tensorflow(module: str) -> None:
    """Evaluating an exported policy runs ONNX Runtime; importing TensorFlow there (even
    lazily, inside a function) cost each `evaluate` task seconds of start-up."""
    heavy = ("tensorflow", "keras", "tf2onnx", "pipeline.learn.rl.env", "pipeline.learn.training")
    found = [
        name
        for name in imported_modules(REPO / module)
        if any(name == h or name.startswith(f"{h}.") for h in heavy)
    ]
    assert found == []
