"""Every bench's set-up and main path on tiny inputs: a change that breaks a bench fails
here. Figures are checked for presence and sense (positive, finite), never against the
benches' speed floors: speed is measured by the bench scripts, not by timed tests."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy.engine import Engine

from bench.common import Floors
from pipeline.settings import default_data_dir
from tests.support.services import require_bench_deps

DATA = default_data_dir()
needs_data = pytest.mark.skipif(DATA is None, reason="no recorded market data (../shared/data)")


def positive(value: Any) -> bool:
    """A positive, finite number."""
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.fixture
def postgres(pg_server: Engine) -> Engine:
    """The Postgres server the benches' scratch databases are made on (skipped without)."""
    return pg_server


def test_floors_name_every_failure_and_exit_non_zero() -> None:
    floors = Floors()
    assert floors.check("fast", True) == "PASS"
    assert floors.check("slow", False) == "FAIL"
    with pytest.raises(SystemExit, match="floors failed: slow"):
        floors.exit()
    Floors().exit()  # nothing failed: no exit


def test_inference_bench_reports_each_runtime_and_the_ratios() -> None:
    from bench import inference

    figures = inference.measure(calls=20, batches=2)
    for name in inference.RUNTIMES:
        f = figures[name]
        assert f["calls"] > 0
        assert all(positive(f[key]) for key in ("p50_us", "p99_us", "obs_per_s"))
        assert f["p99_us"] >= f["p50_us"]
    assert positive(figures["ratio_model"])
    assert positive(figures["ratio_predict"])
    floors = inference.report(figures)
    assert set(floors.failed) <= {"onnxruntime p50", "model(x) / onnxruntime"}


@pytest.mark.postgres
@pytest.mark.usefixtures("postgres")
def test_upsert_bench_stores_every_row_and_reports_the_ratios() -> None:
    from bench import upsert

    figures = upsert.measure(rows=2_000, markets=2)
    assert figures["rows"] == 2_000
    assert set(figures["rows_per_s"]) == {"copy", "upsert_new", "upsert_unchanged", "to_sql"}
    assert all(positive(v) for v in figures["rows_per_s"].values())
    ratios = ("new_vs_copy", "unchanged_vs_copy", "new_vs_to_sql")
    assert all(positive(figures[key]) for key in ratios)
    assert set(upsert.report(figures).failed) <= {"(b)/(a)", "(c)/(a)", "(b)/(d)"}


@needs_data
@pytest.mark.postgres
@pytest.mark.usefixtures("postgres")
def test_backfill_dialects_bench_backfills_both_dialects_within_the_stated_limit() -> None:
    from bench import backfill_dialects

    assert DATA is not None
    runs = [backfill_dialects.one_run(d, DATA, 20.0, 300) for d in ("binance", "kraken")]
    binance, kraken = runs
    assert binance["markets"] == kraken["markets"] >= 3
    assert 0 < binance["fetched"] <= 300 * binance["markets"]
    assert 0 < kraken["fetched"] <= 719 * kraken["markets"]
    for run in runs:
        assert all(positive(run[figure]) for figure in ("rate", "ceiling", "share"))
        assert run["requests"]["klines"] >= run["markets"]
    assert backfill_dialects.report(runs, 20.0).failed == []


@needs_data
@pytest.mark.postgres
@pytest.mark.usefixtures("postgres")
def test_backfill_bench_fetches_every_series_on_both_runs() -> None:
    from bench import backfill

    assert DATA is not None
    ranges = backfill.series(DATA, candles=300)
    assert len(ranges) >= 3
    assert all(end - start <= 300 * market.timeframe_ms for market, start, end in ranges)
    figures = backfill.measure(DATA, candles=300)
    paced, baseline = figures["runs"]
    for run in (paced, baseline):
        assert run["markets"] == len(ranges)
        assert 0 < run["fetched"] <= 300 * len(ranges)
        assert positive(run["rate"])
        assert positive(run["storing_per_100k"])
    assert paced["fetched"] == baseline["fetched"]
    assert paced["418"] == 0
    assert positive(figures["ceiling"])
    assert positive(figures["share"])
    assert positive(figures["ratio_baseline"])
    assert set(backfill.report(figures).failed) <= {"paced backfill"}


@needs_data
@pytest.mark.postgres
@pytest.mark.usefixtures("postgres")
def test_serving_latency_bench_trades_a_registered_champion_with_the_watch_on() -> None:
    from bench import serving_latency

    assert DATA is not None
    figures = serving_latency.measure(decisions=6, data_dir=DATA)
    assert figures["version"] == 1
    for path in ("onnx", "keras"):
        run = figures[path]
        for stage in (*serving_latency.STAGES, "total", "watch", "step"):
            assert run[stage].shape == (6,)
            assert np.all(np.isfinite(run[stage]))
            assert np.all(run[stage] >= 0)
        assert sum(run["outcomes"].values()) == 6
        verdict = run["verdict"]  # the champion watch judged the registered version
        assert verdict is not None
        assert not verdict.blind
        assert not verdict.breached
        assert verdict.limit == pytest.approx(serving_latency.WIDE_DRAWDOWN)
        assert verdict.decisions >= 5
    assert positive(figures["p99_ms"])
    assert figures["p99_with_watch_ms"] >= figures["p99_ms"]
    assert positive(figures["ratio_inference"])
    assert positive(figures["ratio_total"])
    floors = serving_latency.report(figures)
    assert set(floors.failed) <= {"decision p99", "Keras / ONNX inference"}


@needs_data
@pytest.mark.postgres
@pytest.mark.usefixtures("postgres")
def test_arbitrage_bench_finds_the_same_cycles_and_trades_on_paper() -> None:
    from bench import arbitrage

    args = arbitrage.parse(
        [
            *("--currencies", "40", "--markets", "120", "--updates", "200"),
            *("--searches", "5", "--cycles", "5"),
        ]
    )
    figures = arbitrage.measure(args, Floors())  # asserts both sides agree on the cycles
    assert args.currencies == 40
    assert args.cycles == 5
    for key in (
        "update_full_p50_us",
        "update_full_vs_python",
        "update_market_p99_us",
        "update_market_vs_python",
        "search_p50_ms",
        "search_vs_python",
        "search_vs_python_bellman_ford",
    ):
        assert positive(figures[key]), key
    leg = figures["first_leg"]
    assert leg is not None
    assert leg["traded"] == 5
    assert positive(leg["p50_ms"])
    assert leg["p99_ms"] >= leg["p50_ms"]


@needs_data
@pytest.mark.postgres
@pytest.mark.usefixtures("postgres")
def test_nightly_train_bench_runs_the_train_dag_tasks_on_a_tiny_budget() -> None:
    from bench import nightly_train
    from pipeline.settings import TrainingSettings

    tiny = {
        "train_days": 28,
        "valid_days": 3,
        "decision_every": 1,
        "episode_length": 24,
        "a2c_steps": 1_024,
        "a2c_envs": 8,
        "dqn_steps": 256,
        "dqn_envs": 2,
        "folds": 2,
        "ensemble": 1,
    }
    figures = nightly_train.measure("2020-03-01", days=80, training=tiny)
    assert (figures["folds"], figures["ensemble"]) == (2, 1)
    algorithms = len(TrainingSettings().algorithms)
    assert figures["baseline"]["runs"] == algorithms
    assert figures["nightly"]["runs"] == 2 * algorithms
    assert positive(figures["baseline"]["seconds"])
    assert positive(figures["nightly"]["seconds"])
    assert positive(figures["ratio"])
    assert figures["nightly"]["chosen"]["algorithm"] in ("a2c", "dqn")
    assert nightly_train.report(figures).failed == []


@needs_data
def test_train_throughput_bench_times_our_agents_past_their_first_chunk() -> None:
    from bench import train_throughput as bench
    from pipeline.settings import TrainingSettings

    assert DATA is not None
    market = bench.load_window(DATA, "2019-06-01", "2019-08-01")
    assert len(market.data) > 1_000
    results = bench.throughput(
        market,
        steps={"a2c": 4 * 256, "dqn": 3 * 64},
        envs={"a2c": [4], "dqn": [1]},
        repeats=1,
        jit=False,
        sb3_steps=None,
        overrides={
            "a2c": {"chunk_steps": 256},
            "dqn": {"chunk_steps": 64, "learning_starts": 32, "batch_size": 16},
        },
    )
    for algorithm in ("a2c", "dqn"):
        (m,) = results[algorithm]
        assert m.algorithm == algorithm
        assert m.steps > 0
        assert m.updates > 0
        assert positive(m.steps_per_s)
        assert positive(m.updates_per_s)
    training = TrainingSettings(
        algorithms=("a2c", "dqn"),
        a2c_steps=512,
        a2c_envs=4,
        dqn_steps=128,
        dqn_envs=1,
        episode_length=24,
    )
    daily = bench.load_window(
        DATA, "2019-06-01", "2019-08-01", training.features, training.decision_every
    )
    nightly = bench.nightly_runs(daily, training, repeats=1)
    assert [m.algorithm for m in nightly] == ["a2c", "dqn"]
    assert all(positive(m.seconds) and m.steps > 0 for m in nightly)


@needs_data
def test_time_to_quality_bench_scores_all_three_learners_on_the_same_folds() -> None:
    require_bench_deps("stable_baselines3", "torch")
    from bench import time_to_quality as bench
    from pipeline.settings import Settings

    assert DATA is not None
    training = {"folds": 2, "train_days": 60, "valid_days": 20, "episode_length": 20}
    training |= {"ensemble": 2, "a2c_envs": 4, "a2c_steps": 2048}
    settings = Settings(training=training)
    folds = bench.recorded_folds(settings, DATA, 2)
    assert [len(fold.prepared.valid_features) for fold in folds] == [19, 19], "20 daily closes"
    lines: list[str] = []
    result = bench.compare(settings, folds, budget=2.0, say=lines.append)
    assert set(result["curves"]) == {"SB3 PPO", "SB3 A2C", "our A2C x2"}
    for curve in result["curves"].values():
        assert math.isfinite(curve[-1][1]), "every fold scored by the end of the budget"
    assert all(positive(seconds) for seconds in result["reached"].values())
    assert all(positive(seconds) for seconds in result["held_from"].values())
    assert sum("x SB3 PPO's" in line for line in lines) == 2, "the others against SB3 PPO"


@needs_data
def test_gpu_check_runs_its_parts_on_the_cpu(tmp_path: Path) -> None:
    from bench import gpu_check

    assert gpu_check.parse([]).require_gpu is False
    args = gpu_check.parse(["--require-gpu", "--steps", "1000"])
    assert args.require_gpu
    assert args.steps == 1_000
    result, market, rate = gpu_check.train(512, False, ("2019-06-01", "2019-07-01"), envs=4)
    assert positive(rate)
    assert result.env_steps > 0
    figures = gpu_check.inference(result, market, tmp_path, batches=2, singles=10)
    assert "CPUExecutionProvider" in figures["cuda_providers"]
    for name in ("cpu", "cuda"):
        assert positive(figures[name]["obs_per_s"])
        assert positive(figures[name]["p50_us"])
    assert positive(figures["ratio"])
    assert figures["parity_ok"], figures["parity_max_abs_diff"]


@needs_data
def test_celery_overhead_set_up_without_airflow_or_celery() -> None:
    from bench import celery_overhead as bench
    from pipeline.exchanges.simulator.app import SimulatorConfig, running

    args = bench.parse([])
    assert (args.days, args.end, args.redis) == (1, "2020-03-01", "redis://127.0.0.1:6379/13")
    assert bench.parse(["--days", "30", "--keep"]).days == 30
    assert DATA is not None
    with running(SimulatorConfig(data_dir=DATA)) as sim:
        markets = bench.recorded_1h_markets(sim)
        assert markets == sorted(markets)
        assert "binance:BTC/USDT:1h" in markets
        assert all(m.startswith("binance:") and m.endswith(":1h") for m in markets)
        bench.check_window(sim, bench.datetime(2020, 3, 1, tzinfo=bench.UTC), 1)
        with pytest.raises(SystemExit, match="within the recorded 1h data"):
            bench.check_window(sim, bench.datetime(2010, 1, 1, tzinfo=bench.UTC), 1)

    assert (bench.parse([]).preload, bench.parse([]).executor) == ("both", "both")
    assert bench.parse(["--executor", "celery"]).executor == "celery"
    assert bench.PRELOAD_CHOICES[bench.parse(["--preload", "on"]).preload] == (True,)

    def result(
        executor: str, overhead: float, failed: int = 0, preload: bool = True, duration=2.0
    ) -> Any:
        return bench.Result(
            executor, preload, 60.0, 100.0 * overhead, 24, failed, 72, 0,
            np.full(72, overhead), np.full(72, duration),
        )  # fmt: skip

    local, celery = result("local", 0.1), result("celery", 0.3)
    ratios = bench.ratios(local, celery)
    assert ratios["overhead_p50"] == pytest.approx(3.0)
    assert ratios["wall"] == pytest.approx(3.0)
    assert ratios["duration_p50"] == pytest.approx(1.0)
    assert ratios["celery_overhead_p50_s"] == pytest.approx(0.3)
    without = result("local", 0.1, preload=False, duration=40.0)
    preloaded = bench.preload_ratios(without, local)
    assert preloaded["duration_p50"] == pytest.approx(0.05)
    assert preloaded["import_share"] == pytest.approx(0.95)
    assert bench.report([without, local, celery]) is True
    assert bench.report([local, result("celery", 0.3, failed=1)]) is False


@needs_data
def test_cross_execution_bench_closes_every_exposure_and_counts_profit_to_the_cent() -> None:
    from bench import cross_execution

    args = cross_execution.parse(
        ["--trades", "8", "--baseline-trades", "3", "--trader-trades", "6", "--fault-rate", "0.5"]
    )
    floors = Floors()
    figures = cross_execution.measure(args, floors)
    assert figures["trades"] == 8
    assert figures["left_open"] == 0
    assert figures["profit_gap"] <= 0.01
    assert positive(figures["dispatch_p99_ms"])
    assert positive(figures["baseline_p99_ms"])
    trader = figures["trader"]
    assert trader["trades"] >= 1
    assert trader["left_open"] == 0
    assert trader["profit_gap"] <= 0.01
    assert positive(trader["latency_p99_ms"])
    assert set(floors.failed) <= {"dispatch p99", "trader: detection p99"}
