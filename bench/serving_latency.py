"""Decision latency of the trader in paper mode: the ONNX policy against the Keras model.

The real `serving.trader.Trader` trades binance BTC/USDT 1h on the exchange simulator
(recorded data, its clock sped up so that a candle closes every 10 milliseconds),
state in a scratch Postgres database, with the training feature set (17 features,
a 721-candle window) and the default network size. Every step is one decision. The
decision latency runs from "closed candle available" (the window fetched) to "order
handed to the broker" plus writing the decision and its order: state read, features,
inference, sizing and risk, persistence. The network (clock, candle window and the
paper broker's order book, all over HTTP) is measured separately and excluded. The
same run is repeated with the Keras model called directly (`model(x)`) in place of
ONNX Runtime. Floors (issue 6): decision p99 <= 5 ms and >= 10x faster than the
Keras path.

    python -m bench.serving_latency [--decisions N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

FLOOR_P99_MS = 5.0
FLOOR_RATIO = 10.0
MARKET = "binance:BTC/USDT:1h"
SPEED = 360_000  # simulated seconds per second
STAGES = ("state", "features", "inference", "risk", "persistence")


class KerasSession:
    """The Keras model behind ONNX Runtime's `run` signature (the baseline path)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def run(self, _outputs: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        (obs,) = feeds.values()
        return [self.model(obs, training=False).numpy()]


class FixedWatch:
    """A watch that always serves one policy (the bench swaps nothing)."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy

    def current(self) -> Any:
        return self.policy

    def poll(self) -> Any:
        return self.policy


@contextmanager
def simulator_process(data_dir: Path) -> Iterator[str]:
    """The exchange simulator in its own process (in ours it would share our GIL), its
    clock at 100 hours per second (about one candle per step: faster, the replay of the
    recording would compound its price growth into prices no account can trade), no
    weight budget to speak of."""
    import socket

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline",
            "simulator",
            "--data",
            str(data_dir),
            "--port",
            str(port),
            "--shift-to-now",
            "--speed",
            str(SPEED),
            "--weight-budget",
            str(10**9),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/api/v3/ping", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit("the exchange simulator did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def run(policy: Any, engine: Any, sim_url: str, folder: Path, decisions: int) -> dict:
    """Decide `decisions` times; per-stage milliseconds and the network time per step."""
    import sqlalchemy as sa

    from pipeline.exchanges.client import ExchangeClient, RetryPolicy, create_ccxt
    from pipeline.settings import ExchangeConfig, Settings
    from serving.broker import PaperBroker
    from serving.risk import RiskGate
    from serving.trader import Trader

    settings = Settings(
        var_dir=folder,
        db_url=engine.url.render_as_string(hide_password=False),
        exchanges={"binance": {"ccxt_id": "binance", "url": sim_url}},
        markets=[MARKET],
        serving={
            "model_poll_seconds": 3600,
            "risk": {
                "stale_after_timeframes": 1e9,
                "flash_move": 1e9,
                "max_orders_per_hour": 10**9,
                "daily_loss_limit": 1.0,
            },
        },
    )
    client = create_ccxt("binance", ExchangeConfig(ccxt_id="binance", url=sim_url))
    client.enableRateLimit = False  # ccxt's 50 ms spacing would only slow the bench down
    exchange = ExchangeClient("binance", client, RetryPolicy())
    exchange.load_markets()
    with engine.begin() as conn:
        for table in ("decisions", "orders", "fills", "positions", "equity", "risk_events"):
            conn.execute(sa.text(f"DELETE FROM {table}"))
    trader = Trader(
        settings=settings,
        engine=engine,
        exchanges={"binance": exchange},
        brokers={"binance": PaperBroker(exchange, settings.serving.fee_bps)},
        watches={policy.name: FixedWatch(policy)},
        risk=RiskGate(settings.serving.risk, [MARKET]),
    )
    state = trader.markets[MARKET]
    stages: dict[str, list[float]] = {stage: [] for stage in (*STAGES, "broker")}
    totals, steps = [], []
    while len(totals) < decisions:
        start = time.perf_counter()
        if trader.step():
            steps.append((time.perf_counter() - start) * 1000)
            for stage in stages:
                stages[stage].append(state.timings[stage])
            totals.append(state.last_decision_ms)
    decided = {
        "total": np.asarray(totals),
        **{k: np.asarray(v) for k, v in stages.items()},
        "step": np.asarray(steps),
    }
    with engine.connect() as conn:
        decided["orders"] = conn.execute(sa.text("SELECT count(*) FROM orders")).scalar()
        decided["outcomes"] = dict(
            conn.execute(sa.text("SELECT outcome, count(*) FROM decisions GROUP BY outcome")).all()
        )
    return decided


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serving_latency", description=__doc__)
    parser.add_argument("--decisions", type=int, default=10_000, help="decisions per path")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import onnxruntime as ort

    from bench.common import Floors, default_policy, scratch_database
    from pipeline.export import export_onnx
    from pipeline.registry import model_name
    from pipeline.settings import load_settings
    from serving.model import Policy

    spec, model, lineage = default_policy()
    name = model_name(MARKET)
    data_dir = load_settings().data_dir
    if data_dir is None:
        raise SystemExit("recorded market data not found (../shared/data, CRYPTOBOTS_DATA_DIR)")
    with (
        tempfile.TemporaryDirectory(prefix="cb_bench_serving_") as folder,
        scratch_database("cb_bench_serving") as engine,
        simulator_process(data_dir) as sim_url,
    ):
        path = export_onnx(model, lineage, Path(folder) / "policy.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1  # as serving does
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )

        def policy(runtime: Any, input_name: str) -> Policy:
            return Policy(
                name, 1, "bench", spec, (0.0, 1.0), 1, "dqn", "bench", runtime, input_name
            )

        onnx = run(
            policy(session, session.get_inputs()[0].name),
            engine,
            sim_url,
            Path(folder),
            args.decisions,
        )
        keras = run(
            policy(KerasSession(model), "obs"), engine, sim_url, Path(folder), args.decisions
        )

    def pct(values: np.ndarray, q: float) -> float:
        return float(np.percentile(values, q))

    print(
        f"decisions per path: {args.decisions} (paper orders: ONNX {onnx['orders']}, "
        f"Keras {keras['orders']}), candle window {spec.window}, {spec.dim} features; "
        f"outcomes ONNX {onnx['outcomes']}, Keras {keras['outcomes']}"
    )
    print(f"{'ms':<12}{'ONNX p50':>10}{'ONNX p99':>10}{'Keras p50':>11}{'Keras p99':>11}")
    for stage in (*STAGES, "total"):
        print(
            f"{stage:<12}{pct(onnx[stage], 50):>10.3f}{pct(onnx[stage], 99):>10.3f}"
            f"{pct(keras[stage], 50):>11.3f}{pct(keras[stage], 99):>11.3f}"
        )
    network = onnx["step"] - onnx["total"]
    print(
        f"network, excluded (clock, window, book over HTTP): p50 {pct(network, 50):.3f} ms, "
        f"p99 {pct(network, 99):.3f} ms per step; paper broker incl. book fetch p50 "
        f"{pct(onnx['broker'], 50):.3f} ms"
    )
    p99 = pct(onnx["total"], 99)
    ratio_inference = pct(keras["inference"], 50) / pct(onnx["inference"], 50)
    ratio_total = pct(keras["total"], 50) / pct(onnx["total"], 50)
    floors = Floors()
    print(
        f"decision p99 {p99:.3f} ms (floor <= {FLOOR_P99_MS} ms): "
        f"{floors.check('decision p99', p99 <= FLOOR_P99_MS)}"
    )
    print(
        f"Keras / ONNX p50: inference {ratio_inference:.1f}x (floor >= {FLOOR_RATIO}x: "
        f"{floors.check('Keras / ONNX inference', ratio_inference >= FLOOR_RATIO)}), whole "
        f"decision {ratio_total:.2f}x"
    )
    floors.exit()


if __name__ == "__main__":
    main()
