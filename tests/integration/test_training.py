"""The train stage: snapshot stored candles, train, evaluate beside baselines, record runs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import fsspec
import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.data.backfill import backfill
from pipeline.db.engine import create_engine
from pipeline.db.migrate import upgrade
from pipeline.errors import DataValidationError
from pipeline.learn.export import read_lineage
from pipeline.learn.features import compute_features
from pipeline.learn.onnx_evaluation import evaluate_run
from pipeline.learn.prepare import prepare
from pipeline.learn.run_files import local_copy
from pipeline.learn.selection import select_best
from pipeline.learn.snapshot import load_snapshot, snapshot_window
from pipeline.learn.train_request import TrainRequest
from pipeline.learn.training import export_policy, register_policy, train_candidate, train_policy
from pipeline.learn.training_runs import RunNotFound, get_run
from pipeline.learn.windows import Window
from pipeline.models.registry import get_version, model_name
from pipeline.settings import Settings
from tests.support.exchange import exchange_client
from tests.support.paths import REPO
from tests.support.training import BTC, TRAIN, VALID, ms, request

pytestmark = pytest.mark.postgres


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


def test_training_exporting_and_registering_run_as_steps_of_their_own(
    settings: Settings, engine: Engine
) -> None:
    asked = request("dqn")
    snapshot = load_snapshot(snapshot_window(settings, engine, BTC, TRAIN, VALID))
    prepared = prepare(snapshot, asked.spec, asked.decision_every, asked.sizing)
    trained = train_policy(settings, asked, prepared, "steps-alone")
    assert trained.env_steps >= asked.steps
    exported = export_policy(settings, asked, prepared, trained.policy, "steps-alone")
    assert read_lineage(exported.onnx).training_run == "steps-alone"
    assert exported.parity.max_abs_diff <= 1e-5
    version = register_policy(settings, engine, asked, exported, "steps-alone")
    registered = get_version(engine, model_name(str(BTC)), version)
    assert (registered["training_run"], registered["status"]) == ("steps-alone", "candidate")
    with pytest.raises(RunNotFound):
        get_run(engine, "steps-alone")


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
        "sized_hold",  # buy-and-hold and momentum under the default volatility target
        "sized_momentum_168h",
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
