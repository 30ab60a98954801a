"""`python -m pipeline models register`: a policy trained elsewhere becomes a candidate
version of its market's model after running finitely on 1,000 real observations of the
stored candles; a refused one leaves the registry as it was."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.db.upsert import upsert_ohlcv
from pipeline.models.registry import list_versions, load_verified
from tests.support.candles import HOUR, T0, candle
from tests.support.cli_env import pipeline_env
from tests.support.paths import REPO
from tests.support.policies import foreign_model
from tests.support.services import require_bench_deps

pytestmark = pytest.mark.postgres

MARKET = "binance:BTC/USDT:1h"
NAME = "binance-btc-usdt-1h"
FEATURES = "ret_1,ret_4,ret_24,rsi_14"
DAY = 86_400_000


@pytest.fixture
def engine(fresh_pg) -> Engine:
    """A database with 2,500 hours of a random-walk BTC/USDT (the promotion window: 90 days)."""
    engine = fresh_pg()
    closes = 100 * np.exp(np.cumsum(np.random.default_rng(1).normal(0, 0.01, 2500)))
    upsert_ohlcv(engine, [candle(T0 + i * HOUR, float(c)) for i, c in enumerate(closes)])
    return engine


def models(
    engine: Engine, tmp_path: Path, *args: str, valid_days: int = 20, **settings: str
) -> subprocess.CompletedProcess:
    """`python -m pipeline models ARGS` on `engine`'s database, 3 folds of `valid_days`."""
    env = pipeline_env(
        engine, tmp_path, MARKET, training__folds="3", training__valid_days=str(valid_days),
        **settings,
    )  # fmt: skip
    command = [sys.executable, "-m", "pipeline", "models", *args]
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)


def register(
    engine: Engine, tmp_path: Path, source: Path, valid_days: int = 20
) -> subprocess.CompletedProcess:
    declared = ["--market", MARKET, "--features", FEATURES, "--action-map", "0,1"]
    return models(engine, tmp_path, "register", str(source), *declared, valid_days=valid_days)


def test_a_foreign_policy_is_registered_as_a_candidate_with_an_external_lineage(
    engine: Engine, tmp_path: Path
) -> None:
    done = register(engine, tmp_path, foreign_model(tmp_path / "policy.onnx"))
    assert done.returncode == 0, done.stderr[-3000:]
    [version] = list_versions(engine, NAME)
    assert (version["algorithm"], version["status"]) == ("external", "candidate")
    assert version["training_run"].startswith("external:")
    assert version["metrics"]["external"]["origin"] == str(tmp_path / "policy.onnx")
    verified = load_verified(engine, NAME, version["version"], tmp_path / "check")
    assert verified.lineage.feature_spec.features == tuple(FEATURES.split(","))
    assert json.loads(done.stdout)["observations"] >= 1000
    evidence = version["metrics"]["walk_forward"]
    assert [fold["valid"][1] - fold["valid"][0] for fold in evidence["folds"]] == [20 * DAY] * 3
    assert evidence["confidence"]["n_trials"] == 1, "the first model of the market: one trial"
    expectations = version["metrics"]["expectations"]  # what the champion watch reads
    assert expectations["source"] == "3 walk-forward folds"
    assert 3 * 470 <= expectations["steps"] < 3 * 480, "the hours of the three folds"


def test_a_policy_without_history_for_its_folds_is_refused_and_nothing_stored(
    engine: Engine, tmp_path: Path
) -> None:
    done = register(engine, tmp_path, foreign_model(tmp_path / "policy.onnx"), valid_days=60)
    assert done.returncode != 0
    assert "not enough history for its 3 walk-forward folds" in done.stderr, done.stderr[-3000:]
    assert "backfill" in done.stderr
    assert list_versions(engine, NAME) == []


def test_a_policy_with_nan_scores_on_real_candles_is_refused_and_nothing_stored(
    engine: Engine, tmp_path: Path
) -> None:
    done = register(engine, tmp_path, foreign_model(tmp_path / "policy.onnx", op="Log"))
    assert done.returncode != 0
    assert "non-finite scores" in done.stderr, done.stderr[-3000:]
    assert "policy.onnx" in done.stderr
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM model_versions")).scalar() == 0
    assert not (tmp_path / "artifacts").exists() or not any((tmp_path / "artifacts").rglob("*"))


def test_a_registered_foreign_policy_is_gated_like_any_candidate_and_can_be_champion(
    engine: Engine, tmp_path: Path
) -> None:
    assert register(engine, tmp_path, foreign_model(tmp_path / "policy.onnx")).returncode == 0
    gated = models(engine, tmp_path, "promote", "1")
    forced = models(engine, tmp_path, "promote", "1", "--force", "--reason", "desk's rule")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert gated.returncode != 0
    assert "fails the promotion gates ['evidence']" in gated.stderr, gated.stderr[-3000:]
    assert "'parity': {'passed': True" in gated.stderr, "the file that runs is the file judged"
    with engine.connect() as conn:
        champion = conn.execute(
            sa.text("SELECT version FROM model_aliases WHERE name = :n AND alias = 'champion'"),
            {"n": NAME},
        ).scalar()
    assert champion == 1


def test_the_momentum_rule_is_registered_and_judged_on_its_own_return(
    engine: Engine, tmp_path: Path
) -> None:
    from pipeline.models.rules import momentum_rule

    source, features = momentum_rule(tmp_path / "momentum.onnx")
    declared = ["--market", MARKET, "--features", ",".join(features), "--action-map", "0,1"]
    done = models(engine, tmp_path, "register", str(source), *declared)
    assert done.returncode == 0, done.stderr[-3000:]
    [version] = list_versions(engine, NAME)
    folds = version["metrics"]["walk_forward"]["folds"]
    assert len(folds) == 3
    assert 0 < max(fold["exposure"] for fold in folds) <= 1, "long in rising weeks only"


@pytest.mark.parametrize(
    ("sizing", "baseline"), [("none", "momentum_168h"), ("target", "sized_momentum_168h")]
)
def test_the_registered_momentum_rule_earns_what_the_walk_forward_report_says_per_fold(
    engine: Engine, tmp_path: Path, sizing: str, baseline: str
) -> None:
    from pipeline.learn.rule_baselines import baselines
    from pipeline.learn.windows import Window
    from pipeline.models.rules import momentum_rule
    from pipeline.settings import Market, Settings

    source, features = momentum_rule(tmp_path / "momentum.onnx", reads=("vol_168",))
    declared = ["--features", ",".join(features), "--action-map", "0,1", "--sizing", sizing]
    done = models(engine, tmp_path, "register", str(source), "--market", MARKET, *declared)
    assert done.returncode == 0, done.stderr[-3000:]
    [version] = list_versions(engine, NAME)
    folds = version["metrics"]["walk_forward"]["folds"]
    settings = Settings(markets=[MARKET], training={"folds": 3, "valid_days": 20})
    windows = [Window(*fold["valid"]) for fold in folds]
    report = baselines(settings, engine, Market.model_validate(MARKET), windows, every=1)
    for fold, rule in zip(folds, report[baseline], strict=True):
        assert fold["total_return"] == pytest.approx(rule.metrics["total_return"], abs=1e-9)
        assert fold["max_drawdown"] == pytest.approx(rule.metrics["max_drawdown"], abs=1e-9)
    assert max(f["exposure"] for f in folds) > 0.5, "the look-back: long from the first hour"


LOG_TO_MLFLOW = """
import sys
import mlflow, mlflow.onnx, onnx
mlflow.set_tracking_uri(sys.argv[1])
with mlflow.start_run():
    mlflow.onnx.log_model(onnx.load(sys.argv[2]), name="policy", registered_model_name="desk")
"""


def test_a_policy_logged_to_mlflow_is_registered_from_its_model_uri(
    engine: Engine, tmp_path: Path
) -> None:
    require_bench_deps("mlflow")
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    policy = str(foreign_model(tmp_path / "policy.onnx"))
    logged = subprocess.run(
        [sys.executable, "-c", LOG_TO_MLFLOW, tracking, policy],
        cwd=tmp_path,  # MLflow keeps the artifacts beside the database: ./mlruns
        capture_output=True,
        text=True,
    )
    assert logged.returncode == 0, logged.stderr[-3000:]
    declared = ["--market", MARKET, "--features", FEATURES, "--action-map", "0,1"]
    done = models(
        engine, tmp_path, "register", "models:/desk/1", *declared, mlflow_tracking_uri=tracking
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [version] = list_versions(engine, NAME)
    assert version["metrics"]["external"]["origin"] == "models:/desk/1"
    missing = models(
        engine, tmp_path, "register", "models:/desk/7", *declared, mlflow_tracking_uri=tracking
    )
    assert missing.returncode != 0
    assert "models:/desk/7: MLflow could not fetch it" in missing.stderr, missing.stderr[-3000:]
    assert "mlflow_tracking_uri" in missing.stderr
    assert len(list_versions(engine, NAME)) == 1


def test_a_url_that_does_not_answer_is_refused_naming_it_and_nothing_stored(
    engine: Engine, tmp_path: Path
) -> None:
    from pipeline.ops.deployment import free_port

    url = f"http://127.0.0.1:{free_port()}/policy.onnx"  # nothing listens there
    declared = ["--market", MARKET, "--features", FEATURES, "--action-map", "0,1"]
    done = models(engine, tmp_path, "register", url, *declared)
    assert done.returncode != 0
    assert f"external model {url}: could not be read" in done.stderr, done.stderr[-3000:]
    assert "check the URL and its credentials" in done.stderr
    assert list_versions(engine, NAME) == []
