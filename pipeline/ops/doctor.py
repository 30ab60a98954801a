"""`python -m pipeline doctor`: is this installation able to run the pipeline?

Reports package versions, whether TensorFlow and ONNX Runtime really have a GPU
(not only whether a GPU build is installed), whether the database answers and is
migrated, and whether each configured exchange URL answers. Every failed check
carries the fix. GPU absence is a failure only with `require_gpu`.
"""

from __future__ import annotations

import os
import platform
import sys
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from pipeline.errors import ConfigurationError
from pipeline.settings import Settings

OK, WARN, FAIL = "ok", "warn", "FAIL"

KEY_PACKAGES = (
    "apache-airflow",
    "apache-airflow-providers-postgres",
    "apache-airflow-providers-standard",
    "tensorflow",
    "keras",
    "tf2onnx",
    "onnx",
    "onnxruntime-gpu",
    "ccxt",
    "sqlalchemy",
    "alembic",
    "psycopg2-binary",
    "great-expectations",
    "pandas",
    "pyarrow",
    "numpy",
    "pydantic-settings",
)


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    status: str  # OK, WARN or FAIL
    detail: str
    fix: str = ""


def run_checks(settings: Settings, *, gpu: bool = True) -> list[Check]:
    """Every check, in report order. `gpu=False` skips importing TensorFlow (slow)."""
    checks = [_python(), *_packages()]
    if gpu:
        checks.append(_tensorflow(settings.require_gpu))
    checks.append(_onnxruntime(settings.require_gpu))
    checks += [_database(settings), _artifact_root(settings), _data_dir(settings)]
    checks += [_exchange(name, cfg.url) for name, cfg in settings.exchanges.items()]
    return checks


def healthy(checks: list[Check]) -> bool:
    """True when no check failed (warnings allowed)."""
    return all(check.status != FAIL for check in checks)


def render(checks: list[Check]) -> str:
    """The report as aligned text, one check a line, fixes indented below."""
    width = max(len(check.name) for check in checks)
    lines = []
    for check in checks:
        lines.append(f"{check.status:<4}  {check.name:<{width}}  {check.detail}")
        if check.fix and check.status != OK:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {check.fix}")
    verdict = "healthy" if healthy(checks) else "NOT healthy"
    lines.append(f"cryptobots doctor: {verdict}")
    return "\n".join(lines)


def as_dicts(checks: list[Check]) -> list[dict[str, str]]:
    """The report as plain dicts (for --json)."""
    return [asdict(check) for check in checks]


def _python() -> Check:
    version = platform.python_version()
    if sys.version_info[:2] != (3, 11):
        return Check("python", FAIL, version, "use Python 3.11 (make setup creates .venv with it)")
    return Check("python", OK, f"{version} ({sys.executable})")


def _packages() -> list[Check]:
    checks = []
    for name in KEY_PACKAGES:
        try:
            checks.append(Check(f"pkg {name}", OK, metadata.version(name)))
        except metadata.PackageNotFoundError:
            checks.append(Check(f"pkg {name}", FAIL, "not installed", "run `make setup`"))
    return checks


def _tensorflow(require_gpu: bool) -> Check:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep CUDA probing noise off the report
    try:
        import tensorflow as tf
    except ImportError as error:
        return Check("tensorflow gpu", FAIL, f"cannot import tensorflow: {error}", "make setup")
    gpus = tf.config.list_physical_devices("GPU")
    cuda = tf.test.is_built_with_cuda()
    if gpus:
        names = ", ".join(
            tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
            for gpu in gpus
        )
        return Check("tensorflow gpu", OK, f"{len(gpus)} GPU(s): {names}")
    detail = f"no GPU visible (built with CUDA: {cuda}); training runs on CPU"
    fix = (
        "install requirements-gpu.txt on a machine with an NVIDIA driver"
        if cuda is False or not require_gpu
        else "check the NVIDIA driver and CUDA_VISIBLE_DEVICES"
    )
    return Check("tensorflow gpu", FAIL if require_gpu else WARN, detail, fix)


def _onnxruntime(require_gpu: bool) -> Check:
    try:
        import onnxruntime as ort
    except ImportError as error:
        return Check("onnxruntime", FAIL, f"cannot import onnxruntime: {error}", "make setup")
    from serving.model.policy import usable_providers

    available = ort.get_available_providers()
    usable = usable_providers()
    detail = f"{ort.__version__}; usable providers: {', '.join(usable)}"
    if "CUDAExecutionProvider" in usable:
        return Check("onnxruntime", OK, detail)
    if "CUDAExecutionProvider" in available:
        detail += " (CUDA provider installed but it did not load: no GPU or CUDA libraries)"
    return Check(
        "onnxruntime",
        FAIL if require_gpu else WARN,
        detail + "; inference runs on CPU",
        "install requirements-gpu.txt on a machine with an NVIDIA driver for CUDA inference",
    )


def _database(settings: Settings) -> Check:
    from pipeline.db.engine import create_engine
    from pipeline.db.migrate import current_revision, head_revision

    try:
        engine = create_engine(settings.db_url)
    except ConfigurationError as error:
        return Check("database", FAIL, str(error), "start the database or fix CRYPTOBOTS_DB_URL")
    try:
        current, head = current_revision(engine), head_revision()
    finally:
        engine.dispose()
    where = settings.masked_db_url
    if current != head:
        return Check(
            "database",
            FAIL,
            f"{where} at revision {current or 'none (empty)'}, code expects {head}",
            "run `python -m pipeline db upgrade`",
        )
    return Check("database", OK, f"{where} at revision {current} (head)")


def _artifact_root(settings: Settings) -> Check:
    root = settings.artifact_root
    if "://" in root and not root.startswith("file://"):
        return Check("artifact root", OK, f"{root} (remote; checked when first written)")
    path = Path(root.removeprefix("file://"))
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".doctor-probe"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        return Check(
            "artifact root",
            FAIL,
            f"{path} is not writable: {error}",
            "fix CRYPTOBOTS_ARTIFACT_ROOT",
        )
    return Check("artifact root", OK, f"{path} (writable)")


def _data_dir(settings: Settings) -> Check:
    fix = "set CRYPTOBOTS_DATA_DIR to a folder of recorded candles (see ../shared/data)"
    if settings.data_dir is None:
        return Check("market data dir", WARN, "not set; the simulator has nothing to serve", fix)
    if not settings.data_dir.is_dir():
        return Check("market data dir", WARN, f"{settings.data_dir} does not exist", fix)
    files = sorted(settings.data_dir.glob("*.csv*"))
    return Check("market data dir", OK, f"{settings.data_dir} ({len(files)} candle files)")


def _exchange(name: str, url: str | None) -> Check:
    label = f"exchange {name}"
    if url is None:
        return Check(label, OK, "ccxt's own endpoint (not probed)")
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        return Check(
            label,
            WARN,
            f"{url} does not answer ({reason})",
            f"start the exchange simulator or set CRYPTOBOTS_EXCHANGES__{name.upper()}__URL",
        )
    return Check(label, OK, f"{url} answers (HTTP {status})")
