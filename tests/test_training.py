"""The train stage: snapshot stored candles, train, evaluate beside baselines, record runs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import fsspec
import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.data.backfill import backfill
from pipeline.db.engine import create_engine
from pipeline.db.migrate import upgrade
from pipeline.errors import ConfigurationError, DataValidationError
from pipeline.learn.export import read_lineage
from pipeline.learn.features import Candles, compute_features
from pipeline.learn.training import (
    TrainRequest,
    Window,
    decision_steps,
    evaluate_run,
    load_snapshot,
    local_copy,
    prepare,
    select_best,
    snapshot_window,
    train_candidate,
    verdict,
    walk_forward_folds,
)
from pipeline.learn.training_runs import get_run
from pipeline.models.registry import get_version
from pipeline.settings import Market, Settings
from tests.conftest import exchange_client

REPO = Path(__file__).resolve().parents[1]
BTC = Market.model_validate("binance:BTC/USDT:1h")
pytestmark = pytest.mark.postgres


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


TRAIN = Window(ms("2019-10-01"), ms("2019-12-01"))
VALID = Window(ms("2019-12-01"), ms("2020-01-01"))


@pytest.fixture(scope="module")
def engine(pg_url: str, data_dir: Path) -> Iterator[Engine]:
    """A Postgres database holding BTC/USDT 1h candles stored by the market-data backfill."""
    from pipeline.exchanges.simulator.app import SimulatorConfig, running

    engine = create_engine(pg_url)
    upgrade(engine)
    with running(SimulatorConfig(data_dir=data_dir)) as sim:
        backfill(exchange_client(sim.url), engine, BTC, ms("2019-08-25"), ms("2020-01-01"))
    yield engine
    engine.dispose()


@pytest.fixture
def settings(tmp_path: Path, engine: Engine) -> Settings:
    return Settings(var_dir=tmp_path, db_url=engine.url.render_as_string(hide_password=False))


def request(algorithm: str, **changes: object) -> TrainRequest:
    options = {"steps": 4_000, "num_envs": 8, "episode_length": 48, "seed": 1}
    if algorithm == "a2c":
        options |= {"steps": 40_000, "num_envs": 64}
    return TrainRequest(algorithm, BTC, TRAIN, VALID, **{**options, **changes})


def test_snapshot_holds_the_windows_plus_the_feature_look_back(
    settings: Settings, engine: Engine
) -> None:
    snapshot = load_snapshot(snapshot_window(settings, engine, BTC, TRAIN, VALID))
    assert snapshot.candles.ts[0] <= TRAIN.start - 48 * 3_600_000
    assert snapshot.candles.ts[-1] == VALID.end - 3_600_000
    assert np.all(np.diff(snapshot.candles.ts) == 3_600_000)


def test_normalization_is_fitted_on_the_training_window_only(
    settings: Settings, engine: Engine
) -> None:
    snapshot = load_snapshot(snapshot_window(settings, engine, BTC, TRAIN, VALID))
    prepared = prepare(snapshot)
    train_rows = (snapshot.candles.ts >= TRAIN.start) & (snapshot.candles.ts < TRAIN.end)
    expected = compute_features(snapshot.candles, prepared.spec)[train_rows].mean(axis=0)
    np.testing.assert_allclose(prepared.spec.mean, expected, rtol=1e-9)
    assert prepared.valid_ts[0] == VALID.start
    assert len(prepared.valid_features) == len(prepared.valid_ts) - 1


def test_a_window_without_stored_candles_names_the_backfill_command(
    settings: Settings, engine: Engine
) -> None:
    early = Window(ms("2018-01-01"), ms("2018-02-01"))
    with pytest.raises(DataValidationError, match="python -m pipeline backfill --market"):
        snapshot_window(settings, engine, BTC, early, Window(early.end, ms("2018-02-10")))


def test_validation_must_come_after_training() -> None:
    with pytest.raises(ConfigurationError, match="disjoint"):
        TrainRequest("dqn", BTC, TRAIN, Window(TRAIN.start, VALID.end), steps=1, num_envs=1)


def test_trained_and_evaluated_runs_record_their_lineage_and_metrics(
    settings: Settings, engine: Engine
) -> None:
    snapshot = snapshot_window(settings, engine, BTC, TRAIN, VALID)
    run_ids = []
    for algorithm in ("dqn", "a2c"):
        run_id = train_candidate(settings, engine, request(algorithm), snapshot)
        evaluation = evaluate_run(settings, engine, run_id)
        run = get_run(engine, run_id)
        assert run["status"] == "evaluated"
        assert run["device"] == "CPU"
        assert run["params"]["config"]["seed"] == 1
        assert run["feature_spec"]["mean"] is not None
        assert {k: run["metrics"][k] for k in evaluation.metrics} == pytest.approx(
            evaluation.metrics
        )
        assert run["metrics"]["parity_max_abs_diff"] <= 1e-5
        assert run["metrics"]["parity_rows"] >= 1000
        onnx = local_copy(settings, run["artifacts"]["onnx"], "onnx")
        assert read_lineage(onnx).training_run == run_id
        assert set(run["baselines"]) == {"buy_and_hold", "flat", "momentum"}
        assert run["valid_start"].timestamp() * 1000 == VALID.start
        with fsspec.open(run["artifacts"]["equity_plot"], "rb") as plot:
            assert len(plot.read()) > 0
        assert Path(run["artifacts"]["model"]).exists()
        version = get_version(
            engine, run["artifacts"]["model_name"], int(run["artifacts"]["model_version"])
        )
        assert version["metrics"]["validation"] == pytest.approx(evaluation.metrics)
        assert version["metrics"]["validation_plot"] == run["artifacts"]["equity_plot"]
        run_ids.append(run_id)
    best = select_best(engine, run_ids)
    sharpes = {rid: get_run(engine, rid)["metrics"]["sharpe"] for rid in run_ids}
    assert best["run_id"] == max(sharpes, key=sharpes.get)


def test_an_ensemble_exports_one_policy_averaging_its_members_probabilities(
    settings: Settings, engine: Engine
) -> None:
    import onnxruntime as ort

    snapshot = snapshot_window(settings, engine, BTC, TRAIN, VALID)
    ensemble = train_candidate(settings, engine, request("a2c", seed=3, ensemble=2), snapshot)
    run = get_run(engine, ensemble)
    assert run["params"]["member_seeds"] == [6, 7]
    assert run["metrics"]["parity_max_abs_diff"] <= 1e-5
    members = [
        get_run(engine, train_candidate(settings, engine, request("a2c", seed=s), snapshot))
        for s in (6, 7)
    ]

    def onnx(of: dict) -> str:
        return str(local_copy(settings, of["artifacts"]["onnx"], "onnx"))

    width = ort.InferenceSession(onnx(run)).get_inputs()[0].shape[1]
    obs = np.random.default_rng(0).normal(size=(64, width)).astype(np.float32)
    obs[:, -1] = np.arange(64) % 2

    def probabilities(path: str) -> np.ndarray:
        logits = ort.InferenceSession(path).run(None, {"obs": obs})[0]
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    expected = np.mean([probabilities(onnx(m)) for m in members], axis=0)
    np.testing.assert_allclose(probabilities(onnx(run)), expected, atol=1e-5)


def test_an_ensemble_of_no_members_is_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigurationError, match="CRYPTOBOTS_TRAINING__ENSEMBLE"):
        request("dqn", ensemble=0)


def test_an_expected_position_run_backtests_and_ships_its_rule(
    settings: Settings, engine: Engine
) -> None:
    snapshot = snapshot_window(settings, engine, BTC, TRAIN, VALID)
    run_id = train_candidate(settings, engine, request("a2c", position_rule="expected"), snapshot)
    evaluation = evaluate_run(settings, engine, run_id)
    run = get_run(engine, run_id)
    assert run["params"]["position_rule"] == "expected"
    assert read_lineage(local_copy(settings, run["artifacts"]["onnx"], "onnx")).position_rule == (
        "expected"
    )
    held = evaluation.backtests["policy"].positions
    assert np.all((held >= 0) & (held <= 1))
    assert not np.all(np.isin(held, (0.0, 1.0))), "probability-weighted positions lie between"


def test_expected_positions_are_refused_for_q_values_naming_the_setting() -> None:
    with pytest.raises(
        ConfigurationError, match=r"dqn's Q-values .*CRYPTOBOTS_TRAINING__POSITION_RULE"
    ):
        request("dqn", position_rule="expected")


@pytest.mark.parametrize(
    "change",
    [
        {"steps": 0},
        {"steps": -5},
        {"num_envs": 0},
        {"episode_length": 0},
        {"decision_every": 0},
        {"seed": -1},
    ],
)
def test_a_request_outside_its_ranges_is_refused_before_training(change: dict) -> None:
    [(name, value)] = change.items()
    with pytest.raises(
        ConfigurationError, match=rf"{name} must be a whole number >= \d, got {value}"
    ):
        request("a2c", **change)


def test_dqn_takes_the_argmax_when_the_setting_asks_for_expected_positions(
    settings: Settings,
) -> None:
    tuned = settings.model_copy(
        update={"training": settings.training.model_copy(update={"position_rule": "expected"})}
    )
    assert TrainRequest.from_settings(tuned, "dqn", BTC, TRAIN, VALID).position_rule == "argmax"
    assert TrainRequest.from_settings(tuned, "a2c", BTC, TRAIN, VALID).position_rule == "expected"


def test_a_run_that_crashes_is_recorded_as_failed_with_the_error(
    settings: Settings, engine: Engine
) -> None:
    snapshot = snapshot_window(settings, engine, BTC, TRAIN, VALID)

    def crash(record: dict) -> None:
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        train_candidate(settings, engine, request("dqn"), snapshot, run_id="doomed", on_chunk=crash)
    run = get_run(engine, "doomed")
    assert run["status"] == "failed"
    assert "power cut" in run["error"]


def test_a_training_task_retried_on_another_worker_resumes_from_the_artifact_store(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    root = (tmp_path / "store").as_uri()
    worker_a, worker_b = (
        settings.model_copy(update={"var_dir": tmp_path / name, "artifact_root": root})
        for name in ("a", "b")
    )
    snapshot = snapshot_window(worker_a, engine, BTC, TRAIN, VALID)
    chunked = request("dqn", overrides={"chunk_steps": 1_000})  # 4 chunks of 1,000 steps

    def lost_after_two(record: dict) -> None:
        if record["env_steps"] >= 2_000:
            raise RuntimeError("worker lost")

    with pytest.raises(RuntimeError, match="worker lost"):
        train_candidate(
            worker_a, engine, chunked, snapshot, run_id="moved", on_chunk=lost_after_two
        )
    assert (tmp_path / "store" / "checkpoints" / "moved" / "checkpoint").is_file()
    seen: list[dict] = []
    train_candidate(worker_b, engine, chunked, snapshot, run_id="moved", on_chunk=seen.append)
    assert [r["env_steps"] for r in seen] == [3_000, 4_000], "it went on from the second chunk"
    assert get_run(engine, "moved")["status"] == "trained"
    assert not (tmp_path / "store" / "checkpoints" / "moved").exists(), "dropped once trained"


def test_train_command_prints_metrics_beside_the_baselines_and_saves_the_plot(
    tmp_path: Path, engine: Engine
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOBOTS_")}
    env |= {
        "CRYPTOBOTS_DB_URL": engine.url.render_as_string(hide_password=False),
        "CRYPTOBOTS_VAR_DIR": str(tmp_path),
    }
    command = [sys.executable, "-m", "pipeline", "train", "--market", str(BTC)]
    command += ["--train-start", "2019-10-01", "--train-end", "2019-12-01"]
    command += ["--valid-end", "2020-01-01", "--steps", "20000", "--envs", "16", "--quiet"]
    command += ["--episode-length", "20", "--ensemble", "2", "--algo", "dqn", "--algo", "a2c"]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("policy", "buy_and_hold", "flat", "momentum", "best by validation Sharpe"):
        assert name in done.stdout
    plots = [line.split(": ", 1)[1] for line in done.stdout.splitlines() if "equity plot" in line]
    assert len(plots) == 2
    assert all(Path(plot).stat().st_size > 0 for plot in plots)
    with engine.connect() as conn:
        statuses = conn.execute(
            sa.text("SELECT algorithm, status FROM training_runs WHERE params::text LIKE :p"),
            {"p": '%"num_envs": 16%'},
        ).all()
    assert sorted(statuses) == [("a2c", "evaluated"), ("dqn", "evaluated")]


def test_walk_forward_folds_are_consecutive_and_train_right_before_validating() -> None:
    folds = walk_forward_folds(ms("2020-01-01T05:30"), 3, 60, 30, 3_600_000)
    assert [valid.end for _, valid in folds] == [
        ms("2019-11-02T05:00"),
        ms("2019-12-02T05:00"),
        ms("2020-01-01T05:00"),
    ]
    for train, valid in folds:
        assert train.end == valid.start
        assert valid.end - valid.start == 30 * 86_400_000
    assert all(a[1].end == b[1].start for a, b in pairwise(folds))


def test_verdict_wins_only_above_every_baseline_without_a_deeper_drawdown() -> None:
    baselines = {
        "buy_and_hold": {"sharpe": 1.0, "max_drawdown": 0.2},
        "flat": {"sharpe": 0.0, "max_drawdown": 0.0},
        "momentum": {"sharpe": 0.5, "max_drawdown": 0.1},
    }
    assert verdict({"sharpe": 1.5, "max_drawdown": 0.1}, baselines) == "wins"
    assert verdict({"sharpe": 1.5, "max_drawdown": 0.3}, baselines) == "loses to drawdown"
    assert verdict({"sharpe": 0.7, "max_drawdown": 0.1}, baselines) == "loses to buy_and_hold"


def test_daily_decisions_fall_at_midnight_and_fill_at_the_next_open() -> None:
    hours = 24 * 4
    ts = ms("2020-01-01") + np.arange(hours, dtype=np.int64) * 3_600_000
    price = 100.0 + np.arange(hours)
    candles = Candles(ts, price, price + 1, price - 1, price + 0.5, np.ones(hours))
    features = np.arange(hours, dtype=float)[:, None]
    window = Window(ms("2020-01-01"), ms("2020-01-05"))
    step_ts, opens, closes, rows = decision_steps(candles, features, window, 3_600_000, 24)
    assert [datetime.fromtimestamp(t / 1000, UTC).hour for t in step_ts] == [23] * 4
    np.testing.assert_array_equal(rows[:, 0], [23, 47, 71, 95])
    np.testing.assert_array_equal(closes, price[[23, 47, 71, 95]] + 0.5)
    np.testing.assert_array_equal(opens[1:], price[[24, 48, 72]])


def test_walk_forward_report_replays_both_procedures_beside_the_baselines(
    tmp_path: Path, engine: Engine
) -> None:
    from pipeline.learn.walk_forward_report import report

    settings = Settings(
        var_dir=tmp_path,
        db_url=engine.url.render_as_string(hide_password=False),
        training={"train_days": 30, "valid_days": 14, "folds": 2, "ensemble": 2},
    )
    lines: list[str] = []
    summary = report(
        settings,
        engine,
        BTC,
        ms("2020-01-01"),
        1,
        [0, 1],
        ["dqn", "a2c"],
        changes={"steps": 3_000, "num_envs": 8, "episode_length": 8},
        say=lines.append,
    )
    assert set(summary["seeds"]) == {0, 1}
    for figures in summary["seeds"].values():
        for procedure in ("new", "old"):
            chained = figures[procedure]
            assert chained["steps"] == 13  # 14 daily decisions, the last one closes
            assert chained["worst_fold_return"] == pytest.approx(chained["total_return"])
            assert 0 <= chained["dsr"] <= chained["psr"] <= 1
    assert set(summary["baselines"]) == {
        "buy_and_hold",
        "momentum_24h",
        "momentum_168h",
        "sized_hold",  # buy-and-hold under the default volatility target
    }
    sized, held = summary["baselines"]["sized_hold"], summary["baselines"]["buy_and_hold"]
    assert abs(sized["total_return"]) < abs(held["total_return"])
    assert summary["new_stable_folds"] in (0, 1)
    assert "chained out-of-sample folds" in summary["text"]
    with engine.connect() as conn:
        registered = conn.execute(
            sa.text(
                "SELECT count(*) FROM model_versions v JOIN training_runs r "
                "ON r.id = v.training_run WHERE r.params::text LIKE :p"
            ),
            {"p": '%"episode_length": 8%'},
        ).scalar()
    assert registered == 0, "a replay registers no candidate"
