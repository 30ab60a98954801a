"""The GPU paths, proven in one short run (`make gpu-check`, a few minutes on a GPU box).

1. What the runtimes really have: the doctor's `tensorflow gpu` and `onnxruntime`
   checks (a CUDA build that silently fell back to the CPU counts as no GPU).
2. Training on the GPU: an A2C agent trained on binance BTC/USDT 1h (2019) with the
   device `pipeline.learn.rl.runtime.training_device` picks; prints the device and the
   env-steps per second.
3. Inference: the exported ONNX policy in ONNX Runtime's CUDA provider beside its CPU
   provider in the same process: observations per second at batch 1024 (ratio
   CUDA / CPU) and p50 latency at batch 1, and the session's providers, so a CUDA
   session that fell back to the CPU is caught.
4. Export parity on the GPU: the CUDA session's outputs against the Keras model's
   on the same real observations, within the parity tolerance.

Exit code 1 when any part fails, or, with --require-gpu (the default of
`make gpu-check`), when either runtime has no GPU. On a CPU-only machine without
--require-gpu it still runs every part on the CPU and says so.

    python -m bench.gpu_check [--require-gpu] [--steps N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.inference import latencies
from bench.train_throughput import HIDDEN, load_window
from pipeline.arguments import Parser, positive_int
from pipeline.errors import CryptobotsError
from pipeline.settings import Settings, load_settings

WINDOW = ("2019-01-01", "2020-01-01")
BATCH = 1024
CUDA = "CUDAExecutionProvider"


def runtimes(require_gpu: bool) -> tuple[bool, list[str]]:
    """The doctor's GPU checks: (every one passed, lines to print)."""
    from pipeline.ops.doctor import FAIL, run_checks

    checks = [
        c
        for c in run_checks(Settings(require_gpu=require_gpu))
        if c.name in ("tensorflow gpu", "onnxruntime")
    ]
    return all(c.status != FAIL for c in checks), [
        f"  {c.name}: {c.status} {c.detail}" for c in checks
    ]


def train(
    steps: int, require_gpu: bool, window: tuple[str, str] = WINDOW, envs: int = 64
) -> tuple[Any, Any, Any]:
    """A2C on the recorded `window`; (result, training data, env steps per second)."""
    from pipeline.learn.rl import actor_critic
    from pipeline.learn.rl.env import EnvConfig, TradingEnv

    data_dir = load_settings().data_dir
    if data_dir is None:
        raise SystemExit("no recorded data: set CRYPTOBOTS_DATA_DIR to shared/data")
    market = load_window(data_dir, *window)
    env = TradingEnv(market.data, EnvConfig(num_envs=envs))
    config = actor_critic.A2CConfig(total_steps=steps, hidden=HIDDEN)
    with tempfile.TemporaryDirectory(prefix="cb_gpu_check_") as run_dir:
        result = actor_critic.train(
            config, env, market.spec.mean, market.spec.std, Path(run_dir), require_gpu=require_gpu
        )
    return result, market, result.env_steps / result.seconds


def inference(
    result: Any, market: Any, folder: Path, batches: int = 200, singles: int = 2000
) -> dict[str, Any]:
    """Export, then ONNX Runtime's CUDA and CPU providers side by side (`batches` calls
    at batch 1024, `singles` at batch 1), and parity."""
    import onnxruntime as ort

    from pipeline.learn.export import PARITY_TOLERANCE, Lineage, export_onnx, parity_observations

    lineage = Lineage(
        algorithm="a2c",
        feature_spec=market.spec,
        action_map=(0.0, 0.5, 1.0),
        training_run="gpu-check",
        data_window={"start": WINDOW[0], "end": WINDOW[1]},
        code_version="gpu-check",
    )
    path = export_onnx(result.model, lineage, folder / "policy.onnx")
    features = np.asarray(market.data.features, np.float32)
    observations = parity_observations(features, lineage.action_map)
    batch = np.resize(observations, (BATCH, observations.shape[1]))
    sessions = {
        "cpu": ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]),
        "cuda": ort.InferenceSession(str(path), providers=[CUDA, "CPUExecutionProvider"]),
    }
    figures: dict[str, Any] = {"cuda_providers": sessions["cuda"].get_providers()}
    for name, session in sessions.items():
        feed = session.get_inputs()[0].name
        per_batch = latencies(lambda x, s=session, f=feed: s.run(None, {f: x}), batch, batches)
        single = latencies(lambda x, s=session, f=feed: s.run(None, {f: x}), batch[:1], singles)
        figures[name] = {
            "obs_per_s": BATCH / float(np.median(per_batch)),
            "p50_us": float(np.median(single)) * 1e6,
        }
    cuda = sessions["cuda"]
    ours = cuda.run(None, {cuda.get_inputs()[0].name: observations})[0]
    theirs = np.asarray(result.model(observations), np.float32)
    figures["parity_max_abs_diff"] = float(np.abs(ours - theirs).max())
    figures["parity_ok"] = figures["parity_max_abs_diff"] <= PARITY_TOLERANCE
    figures["ratio"] = figures["cuda"]["obs_per_s"] / figures["cpu"]["obs_per_s"]
    return figures


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = Parser(prog="python -m bench.gpu_check", description=__doc__)
    parser.add_argument("--require-gpu", action="store_true", help="fail without a GPU")
    parser.add_argument("--steps", type=positive_int, default=400_000, help="A2C environment steps")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    failures = []

    print("1. runtimes")
    ok, lines = runtimes(args.require_gpu)
    print("\n".join(lines))
    if not ok:
        failures.append("a runtime has no GPU (--require-gpu)")

    print(f"2. training: A2C, {args.steps} env steps on {WINDOW[0]}..{WINDOW[1]}")
    started = time.perf_counter()
    try:
        result, market, rate = train(args.steps, args.require_gpu)
    except CryptobotsError as error:
        raise SystemExit(f"gpu-check FAILED: {'; '.join([*failures, str(error)])}") from None
    print(
        f"  device {result.device}: {rate:,.0f} env steps/s ({time.perf_counter() - started:.0f} s)"
    )
    if args.require_gpu and "GPU" not in result.device.upper():
        failures.append(f"training ran on {result.device}")

    print(f"3. inference: ONNX Runtime, CUDA provider beside CPU, batch {BATCH} and 1")
    with tempfile.TemporaryDirectory(prefix="cb_gpu_check_") as folder:
        figures = inference(result, market, Path(folder))
    on_gpu = figures["cuda_providers"][0] == CUDA
    print(f"  CUDA session providers: {figures['cuda_providers']}")
    for name in ("cuda", "cpu"):
        f = figures[name]
        rate = f"{f['obs_per_s']:>12,.0f} obs/s at batch {BATCH}"
        print(f"  {name:>4}: {rate}, p50 {f['p50_us']:.0f} us")
    print(f"  ratio cuda/cpu at batch {BATCH}: {figures['ratio']:.2f}x")
    if args.require_gpu and not on_gpu:
        failures.append("the CUDA session fell back to the CPU")

    print(f"4. parity (CUDA session vs Keras): max |diff| {figures['parity_max_abs_diff']:.3g}")
    if not figures["parity_ok"]:
        failures.append("export parity fails on the CUDA provider")

    if failures:
        raise SystemExit("gpu-check FAILED: " + "; ".join(failures))
    print("gpu-check passed" + ("" if on_gpu else " (on the CPU: no GPU here)"))


if __name__ == "__main__":
    main()
