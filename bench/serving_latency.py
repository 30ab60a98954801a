"""Decision latency of the trader in paper mode: the ONNX policy against the Keras model.

The real `serving.model.trader.Trader` trades binance BTC/USDT 1h on the exchange simulator
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

The policy trades as a real champion does: registered in the registry with the
drawdown expectations the champion watch reads, promoted to `champion` and loaded by
the trader's `ModelWatch`, with the champion watch on (`serving.watch_enabled`). Its
expectations are wide (a 99% drawdown at every horizon): the watch judges every
decision but never rolls back or pauses, so both paths trade throughout. The watch
runs after the decision is recorded; its own time per decision is printed apart.

    python -m bench.serving_latency [--decisions N]
"""

from __future__ import annotations

import dataclasses
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

from bench.common import Floors
from pipeline.arguments import Parser, positive_int
from pipeline.models.registry import model_name

FLOOR_P99_MS = 5.0
FLOOR_RATIO = 10.0
MARKET = "binance:BTC/USDT:1h"
SPEED = 360_000  # simulated seconds per second
STAGES = ("state", "features", "inference", "risk", "persistence")
WIDE_DRAWDOWN = 0.99  # the watch's expectations: judged every decision, never breached


class KerasSession:
    """The Keras model behind ONNX Runtime's `run` signature (the baseline path)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def run(self, _outputs: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        (obs,) = feeds.values()
        return [self.model(obs, training=False).numpy()]


class FixedWatch:
    """A model watch that always serves one policy (the Keras path swaps nothing)."""

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


def register_champion(engine: Any, folder: Path, model: Any, lineage: Any) -> int:
    """Export the policy, register it with the metrics the champion watch reads and
    promote it to `champion`, as training and promotion do; its version."""
    from pipeline.learn.evidence import WATCH_HORIZONS
    from pipeline.learn.export import export_onnx
    from pipeline.models.registry import move_alias, register

    name = model_name(MARKET)
    path = export_onnx(model, lineage, folder / "policy.onnx")
    expectations = {
        "horizons": list(WATCH_HORIZONS),
        "drawdown": [WIDE_DRAWDOWN] * len(WATCH_HORIZONS),
        "quantile": 0.95,
        "source": "the bench (wide: never breached)",
        "steps": 0,
    }
    version = register(
        engine, str(folder / "artifacts"), path, name, metrics={"expectations": expectations}
    )
    move_alias(engine, name, version, seen_generation=None, who="bench", reason="bench")
    return version


def run(watch: Any, engine: Any, sim_url: str, folder: Path, decisions: int) -> dict[str, Any]:
    """Decide `decisions` times with the champion watch on; per-stage milliseconds, the
    watch's and the network time per step, the orders and outcomes recorded."""
    import sqlalchemy as sa

    from pipeline.exchanges.client import ExchangeClient, RetryPolicy
    from pipeline.exchanges.factory import create_ccxt
    from pipeline.settings import ExchangeConfig, Settings
    from serving.kernel.broker import PaperBroker
    from serving.model.risk import RiskGate
    from serving.model.trader import Trader

    settings = Settings(
        var_dir=folder,
        db_url=engine.url.render_as_string(hide_password=False),
        exchanges={"binance": {"ccxt_id": "binance", "url": sim_url}},
        markets=[MARKET],
        serving={
            "model_poll_seconds": 3600,
            "watch_enabled": True,
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
        watches={model_name(MARKET): watch},
        risk=RiskGate(settings.serving.risk, [MARKET]),
    )
    watch_ms: list[float] = []
    judge = trader._watch

    def timed_watch(*args: Any) -> None:
        start = time.perf_counter()
        judge(*args)
        watch_ms.append((time.perf_counter() - start) * 1000)

    trader._watch = timed_watch  # type: ignore[method-assign]  # the trader's own, timed
    state = trader.markets[MARKET]
    stages: dict[str, list[float]] = {stage: [] for stage in (*STAGES, "broker")}
    totals, steps = [], []
    while len(totals) < decisions:
        start = time.perf_counter()
        if trader.step():
            steps.append((time.perf_counter() - start) * 1000)
            for stage in stages:
                stages[stage].append(state.timings[stage])
            assert state.last_decision_ms is not None
            totals.append(state.last_decision_ms)
    decided: dict[str, Any] = {
        "total": np.asarray(totals),
        **{k: np.asarray(v) for k, v in stages.items()},
        "watch": np.asarray(watch_ms),
        "step": np.asarray(steps),
        "verdict": state.verdict,
    }
    with engine.connect() as conn:
        decided["orders"] = conn.execute(sa.text("SELECT count(*) FROM orders")).scalar()
        decided["outcomes"] = dict(
            conn.execute(sa.text("SELECT outcome, count(*) FROM decisions GROUP BY outcome")).all()
        )
    return decided


def pct(values: np.ndarray, q: float) -> float:
    """The q-th percentile."""
    return float(np.percentile(values, q))


def measure(decisions: int, data_dir: Path) -> dict[str, Any]:
    """Both paths, `decisions` each, on a scratch database and a simulator of its own:
    per-path timings (`onnx`, `keras`) and the figures the floors judge."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from bench.common import default_policy, scratch_database
    from serving.model.policy import CPU, ModelWatch

    spec, model, lineage = default_policy()
    with (
        tempfile.TemporaryDirectory(prefix="cb_bench_serving_") as folder,
        scratch_database("cb_bench_serving") as engine,
        simulator_process(data_dir) as sim_url,
    ):
        version = register_champion(engine, Path(folder), model, lineage)
        watch = ModelWatch(engine, model_name(MARKET), Path(folder) / "models", [CPU])
        policy = watch.poll()  # the trader polls too; loaded here so both paths share it
        if policy is None or policy.version != version:
            raise SystemExit(f"the champion v{version} did not load")
        onnx = run(watch, engine, sim_url, Path(folder), decisions)
        keras_policy = dataclasses.replace(policy, session=KerasSession(model), input_name="obs")
        keras = run(FixedWatch(keras_policy), engine, sim_url, Path(folder), decisions)
    return {
        "decisions": decisions,
        "version": version,
        "window": spec.window,
        "features": spec.dim,
        "onnx": onnx,
        "keras": keras,
        "p99_ms": pct(onnx["total"], 99),
        "p99_with_watch_ms": pct(onnx["total"] + onnx["watch"], 99),
        "ratio_inference": pct(keras["inference"], 50) / pct(onnx["inference"], 50),
        "ratio_total": pct(keras["total"], 50) / pct(onnx["total"], 50),
    }


def report(figures: dict[str, Any]) -> Floors:
    """Print the table, the watch, the network and the floors' verdicts."""
    onnx, keras = figures["onnx"], figures["keras"]
    print(
        f"decisions per path: {figures['decisions']} (paper orders: ONNX {onnx['orders']}, "
        f"Keras {keras['orders']}), candle window {figures['window']}, "
        f"{figures['features']} features; outcomes ONNX {onnx['outcomes']}, "
        f"Keras {keras['outcomes']}"
    )
    print(f"{'ms':<12}{'ONNX p50':>10}{'ONNX p99':>10}{'Keras p50':>11}{'Keras p99':>11}")
    for stage in (*STAGES, "total", "watch"):
        print(
            f"{stage:<12}{pct(onnx[stage], 50):>10.3f}{pct(onnx[stage], 99):>10.3f}"
            f"{pct(keras[stage], 50):>11.3f}{pct(keras[stage], 99):>11.3f}"
        )
    verdict = onnx["verdict"]
    print(
        f"champion watch on (v{figures['version']}, registered and promoted): "
        f"{verdict.decisions} decisions judged, drawdown {verdict.drawdown:.2%} within "
        f"{verdict.limit:.0%}; after the decision is recorded, so not in 'total'; "
        f"decision + watch p99 {figures['p99_with_watch_ms']:.3f} ms"
    )
    network = onnx["step"] - onnx["total"] - onnx["watch"]
    print(
        f"network, excluded (clock, window, book over HTTP): p50 {pct(network, 50):.3f} ms, "
        f"p99 {pct(network, 99):.3f} ms per step; paper broker incl. book fetch p50 "
        f"{pct(onnx['broker'], 50):.3f} ms"
    )
    p99, ratio_inference = figures["p99_ms"], figures["ratio_inference"]
    floors = Floors()
    print(
        f"decision p99 {p99:.3f} ms (floor <= {FLOOR_P99_MS} ms): "
        f"{floors.check('decision p99', p99 <= FLOOR_P99_MS)}"
    )
    print(
        f"Keras / ONNX p50: inference {ratio_inference:.1f}x (floor >= {FLOOR_RATIO}x: "
        f"{floors.check('Keras / ONNX inference', ratio_inference >= FLOOR_RATIO)}), whole "
        f"decision {figures['ratio_total']:.2f}x"
    )
    return floors


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="python -m bench.serving_latency", description=__doc__)
    parser.add_argument("--decisions", type=positive_int, default=10_000, help="decisions per path")
    args = parser.parse_args(argv)
    from pipeline.settings import load_settings

    data_dir = load_settings().data_dir
    if data_dir is None:
        raise SystemExit("recorded market data not found (../shared/data, CRYPTOBOTS_DATA_DIR)")
    report(measure(args.decisions, data_dir)).exit()


if __name__ == "__main__":
    main()
