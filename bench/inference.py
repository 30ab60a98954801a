"""Inference latency and throughput of an exported policy: ONNX Runtime against Keras.

One policy network of the default size (the DQN head over the training features),
exported with `pipeline.learn.export`, is timed per observation at batch 1 (p50 and p99
over many calls) and at batch 1024 (observations per second) in ONNX Runtime on the
CPU and, in the same process, as the Keras model called directly (`model(x)`) and
through `model.predict(x)`. Floors on this CPU (issue 5): ONNX Runtime p50 <= 50
microseconds at batch 1 and >= 20x faster than `model(x)`.

    python -m bench.inference [--calls N]
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Floors
from pipeline.arguments import Parser, positive_int

FLOOR_P50_US = 50.0
FLOOR_RATIO = 20.0
RUNTIMES = ("onnxruntime", "keras model(x)", "keras predict(x)")


def latencies(run: Callable[[np.ndarray], object], x: np.ndarray, calls: int) -> np.ndarray:
    """Seconds per call of `run(x)`, after a warm-up."""
    for _ in range(min(calls // 10, 200)):
        run(x)
    out = np.empty(calls)
    for i in range(calls):
        start = time.perf_counter()
        run(x)
        out[i] = time.perf_counter() - start
    return out


def measure(calls: int, batches: int = 50) -> dict[str, Any]:
    """Per runtime: batch-1 p50/p99 in microseconds over `calls` calls (fewer for the
    slow Keras paths) and batch-1024 observations per second over `batches` calls; the
    ratios of the Keras paths' p50 to ONNX Runtime's."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import onnxruntime as ort

    from bench.common import default_policy
    from pipeline.learn.export import export_onnx

    spec, model, lineage = default_policy()
    with tempfile.TemporaryDirectory(prefix="cb_bench_inference_") as folder:
        path = export_onnx(model, lineage, Path(folder) / "policy.onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    one = rng.normal(size=(1, spec.dim + 1)).astype(np.float32)
    batch = rng.normal(size=(1024, spec.dim + 1)).astype(np.float32)
    runtimes: dict[str, Callable[[np.ndarray], object]] = {
        "onnxruntime": lambda x: session.run(None, {"obs": x}),
        "keras model(x)": lambda x: model(x, training=False),
        "keras predict(x)": lambda x: model.predict(x, verbose=0),
    }
    counts = {"onnxruntime": calls, "keras model(x)": max(calls // 5, 10)}
    counts["keras predict(x)"] = max(calls // 50, min(calls, 50))
    figures: dict[str, Any] = {"obs_dim": spec.dim + 1, "ort_version": ort.__version__}
    for name, run in runtimes.items():
        single = latencies(run, one, counts[name]) * 1e6
        bulk = latencies(
            run, batch, batches if name != "keras predict(x)" else max(batches * 2 // 5, 1)
        )
        figures[name] = {
            "calls": counts[name],
            "p50_us": float(np.percentile(single, 50)),
            "p99_us": float(np.percentile(single, 99)),
            "obs_per_s": 1024 / float(np.median(bulk)),
        }
    onnx_p50 = figures["onnxruntime"]["p50_us"]
    figures["ratio_model"] = figures["keras model(x)"]["p50_us"] / onnx_p50
    figures["ratio_predict"] = figures["keras predict(x)"]["p50_us"] / onnx_p50
    return figures


def report(figures: dict[str, Any]) -> Floors:
    """Print the table and the floors' verdicts."""
    print(
        f"bench/inference.py: policy obs dim {figures['obs_dim']}, hidden (64, 64), 2 actions; "
        f"CPU with {os.cpu_count()} cores, onnxruntime {figures['ort_version']}"
    )
    print(f"  {'runtime':<18} {'calls':>6} {'p50 us':>10} {'p99 us':>10} {'batch-1024 obs/s':>18}")
    for name in RUNTIMES:
        f = figures[name]
        print(
            f"  {name:<18} {f['calls']:>6} {f['p50_us']:>10.1f} {f['p99_us']:>10.1f} "
            f"{f['obs_per_s']:>18,.0f}"
        )
    onnx_p50, ratio = figures["onnxruntime"]["p50_us"], figures["ratio_model"]
    floors = Floors()
    print(
        f"  onnxruntime p50 {onnx_p50:.1f} us (floor <= {FLOOR_P50_US:.0f} us) -> "
        f"{floors.check('onnxruntime p50', onnx_p50 <= FLOOR_P50_US)}; "
        f"{ratio:.1f}x faster than model(x) (floor >= {FLOOR_RATIO:.0f}x) -> "
        f"{floors.check('model(x) / onnxruntime', ratio >= FLOOR_RATIO)}; "
        f"{figures['ratio_predict']:.0f}x faster than predict(x)"
    )
    return floors


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="python -m bench.inference", description=__doc__)
    parser.add_argument(
        "--calls", type=positive_int, default=5000, help="batch-1 calls per runtime"
    )
    args = parser.parse_args(argv)
    report(measure(args.calls)).exit()


if __name__ == "__main__":
    main()
