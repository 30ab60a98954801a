"""The tasks' modules, preloaded in a fresh interpreter as a worker does it."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.paths import REPO

SCRIPT = """
import json, sys
from pipeline.ops.preload import TASK_MODULES, preload
done = preload()
print(json.dumps({
    "loaded": done.loaded,
    "failed": done.failed,
    "new_threads": done.new_threads,
    "heavy": [m for m in ("tensorflow", "keras", "torch") if m in sys.modules],
    "count": len(TASK_MODULES),
}))
"""


def test_every_task_module_imports_without_tensorflow_or_a_python_thread() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["failed"] == {}
    assert len(result["loaded"]) == result["count"]
    assert result["new_threads"] == []
    assert result["heavy"] == []
