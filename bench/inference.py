"""Inference latency and throughput of an exported policy: ONNX Runtime against Keras.

One policy network of the default size (the DQN head over the training features),
exported with `pipeline.export`, is timed per observation at batch 1 (p50 and p99
over many calls) and at batch 1024 (observations per second) in ONNX Runtime on the
CPU and, in the same process, as the Keras model called directly (`model(x)`) and
through `model.predict(x)`. Floors on this CPU (issue 5): ONNX Runtime p50 <= 50
microseconds at batch 1 and >= 20x faster than `model(x)`.

    python -m bench.inference [--calls N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

FLOOR_P50_US = 50.0
FLOOR_RATIO = 20.0


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.inference", description=__doc__)
    parser.add_argument("--calls", type=int, default=5000, help="batch-1 calls per runtime")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import onnxruntime as ort

    from bench.common import default_policy
    from pipeline.export import export_onnx

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
    calls = {"onnxruntime": args.calls, "keras model(x)": args.calls // 5}
    calls["keras predict(x)"] = max(args.calls // 50, 50)
    print(
        f"bench/inference.py: policy obs dim {spec.dim + 1}, hidden (64, 64), 2 actions; "
        f"CPU with {os.cpu_count()} cores, onnxruntime {ort.__version__}"
    )
    print(f"  {'runtime':<18} {'calls':>6} {'p50 us':>10} {'p99 us':>10} {'batch-1024 obs/s':>18}")
    p50 = {}
    for name, run in runtimes.items():
        single = latencies(run, one, calls[name]) * 1e6
        bulk = latencies(run, batch, 50 if name != "keras predict(x)" else 20)
        p50[name] = float(np.percentile(single, 50))
        print(
            f"  {name:<18} {calls[name]:>6} {p50[name]:>10.1f} "
            f"{np.percentile(single, 99):>10.1f} {1024 / np.median(bulk):>18,.0f}"
        )
    onnx_p50 = p50["onnxruntime"]
    ratio = p50["keras model(x)"] / onnx_p50
    print(
        f"  onnxruntime p50 {onnx_p50:.1f} us (floor <= {FLOOR_P50_US:.0f} us) -> "
        f"{'PASS' if onnx_p50 <= FLOOR_P50_US else 'BELOW'}; "
        f"{ratio:.1f}x faster than model(x) (floor >= {FLOOR_RATIO:.0f}x) -> "
        f"{'PASS' if ratio >= FLOOR_RATIO else 'BELOW'}; "
        f"{p50['keras predict(x)'] / onnx_p50:.0f}x faster than predict(x)"
    )


if __name__ == "__main__":
    main()
