"""DAG files: they parse fast and clean, and Airflow runs them (`dag.test()`)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support.airflow import airflow_env as isolated_airflow_env
from tests.support.airflow import migrated_home, run_python
from tests.support.paths import REPO

HEAVY = ["tensorflow", "ccxt", "pandas", "great_expectations", "onnx", "tf2onnx", "numpy"]


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory, airflow_metadata: Path) -> dict[str, str]:
    """Environment of an isolated Airflow (SQLite metadata) over this repo's dags/ and plugins/."""
    return isolated_airflow_env(migrated_home(tmp_path_factory.mktemp("airflow"), airflow_metadata))


PARSE = f"""
import importlib.util, json, sys, time
import airflow.sdk
from airflow.sdk import BaseHook
from airflow.models import Variable

def forbidden(*args, **kwargs):
    raise RuntimeError("connection or variable look-up while parsing a DAG file")

BaseHook.get_connection = classmethod(forbidden)
Variable.get = staticmethod(forbidden)
report = {{}}
for path in sorted(__import__("pathlib").Path("dags").glob("*.py")):
    before, start = set(sys.modules), time.perf_counter()
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    seconds = time.perf_counter() - start
    heavy = sorted({{m.split(".")[0] for m in set(sys.modules) - before}} & set({HEAVY!r}))
    dags = [v for v in vars(module).values() if type(v).__name__ == "DAG"]
    report[path.name] = {{
        "seconds": seconds,
        "heavy": heavy,
        "dags": [
            {{
                "dag_id": d.dag_id,
                "tags": sorted(d.tags),
                "max_active_runs": d.max_active_runs,
                "retries": [t.retries for t in d.tasks],
                "doc_md": bool(d.doc_md),
            }}
            for d in dags
        ],
    }}
print(json.dumps(report))
"""


def test_every_dag_file_parses_fast_light_and_without_lookups(airflow_env: dict) -> None:
    report = run_python(PARSE, airflow_env)
    assert set(report) == {p.name for p in (REPO / "dags").glob("*.py")}
    for name, parsed in report.items():
        assert parsed["heavy"] == [], f"{name} imports {parsed['heavy']} at parse time"
        assert parsed["seconds"] < 5, f"{name} took {parsed['seconds']:.1f} s to parse"
        assert parsed["dags"], f"{name} defines no DAG"
        for dag in parsed["dags"]:
            assert "cryptobots" in dag["tags"]
            assert dag["max_active_runs"] >= 1
            assert dag["retries"]
            assert min(dag["retries"]) >= 1
            assert dag["doc_md"]


def test_airflow_itself_finds_no_import_errors(airflow_env: dict) -> None:
    report = run_python(
        """
        import json
        from airflow.dag_processing.dagbag import DagBag
        bag = DagBag(dag_folder="dags")
        print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()},
                          "dags": sorted(bag.dags)}))
        """,
        airflow_env,
    )
    assert report["errors"] == {}
    assert "market_data" in report["dags"]


SCHEDULES = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder="dags")
print(json.dumps({
    "errors": {k.split("/")[-1]: str(v) for k, v in bag.import_errors.items()},
    "timetables": {
        dag_id: [type(bag.dags[dag_id].timetable).__name__,
                 bag.dags[dag_id].timetable.serialize()]
        for dag_id in ("train", "market_data") if dag_id in bag.dags
    },
    "docs": {d: bag.dags[d].doc_md for d in ("train", "market_data") if d in bag.dags},
}))
"""


def test_the_schedules_come_from_the_settings_and_the_dag_docs_show_them(
    airflow_env: dict, tmp_path: Path
) -> None:
    config = tmp_path / "cryptobots.yaml"
    config.write_text("airflow:\n  market_data_schedule: '@daily'\n")
    report = run_python(
        SCHEDULES,
        airflow_env
        | {
            "CRYPTOBOTS_CONFIG": str(config),
            "CRYPTOBOTS_TRAINING__SCHEDULE": "30 23 * * 1-5",
            "CRYPTOBOTS_TRAINING__SCHEDULE_TIMEZONE": "America/New_York",
        },
    )
    assert report["errors"] == {}
    kind, train = report["timetables"]["train"]
    assert kind == "CronTriggerTimetable"
    assert (train["expression"], train["timezone"]) == ("30 23 * * 1-5", "America/New_York")
    kind, market_data = report["timetables"]["market_data"]
    assert kind == "CronDataIntervalTimetable"
    assert (market_data["expression"], market_data["timezone"]) == ("0 0 * * *", "UTC")
    assert "`30 23 * * 1-5` in America/New_York" in report["docs"]["train"]
    assert "CRYPTOBOTS_TRAINING__SCHEDULE" in report["docs"]["train"]
    assert "`@daily` in UTC" in report["docs"]["market_data"]


def test_an_invalid_schedule_is_an_import_error_naming_the_setting_and_an_example(
    airflow_env: dict,
) -> None:
    report = run_python(
        SCHEDULES, airflow_env | {"CRYPTOBOTS_TRAINING__SCHEDULE_TIMEZONE": "New York"}
    )
    assert "train.py" in report["errors"]
    error = report["errors"]["train.py"]
    assert "CRYPTOBOTS_TRAINING__SCHEDULE_TIMEZONE='New York'" in error
    assert "America/New_York" in error
    last = error.strip().splitlines()[-1]
    assert last.startswith("pipeline.errors.ConfigurationError: invalid setting"), error[-2000:]


@pytest.mark.postgres
def test_market_data_dag_ingests_one_interval_for_every_market(
    airflow_env: dict, simulator, fresh_pg
) -> None:
    engine = fresh_pg()
    with simulator() as sim:
        env = airflow_env | {
            "CRYPTOBOTS_DB_URL": engine.url.render_as_string(hide_password=False),
            "CRYPTOBOTS_EXCHANGES__BINANCE__URL": sim.url,
            "CRYPTOBOTS_VAR_DIR": str(Path(airflow_env["AIRFLOW_HOME"]) / "var"),
        }
        report = run_python(
            """
            import json, pendulum
            from airflow.dag_processing.dagbag import DagBag
            dag = DagBag(dag_folder="dags").dags["market_data"]
            run = dag.test(logical_date=pendulum.datetime(2019, 1, 1, 5, tz="UTC"))
            print(json.dumps({"state": str(run.state), "tasks": sorted(
                (ti.task_id, ti.map_index, str(ti.state)) for ti in run.get_task_instances())}))
            """,
            env,
        )
    assert report["state"] == "success"
    assert [task[2] for task in report["tasks"]] == ["success"] * 3
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT symbol, ts FROM ohlcv ORDER BY symbol")).all()
    interval_start = 1546315200000  # 2019-01-01T04:00Z: the run's data interval is [04:00, 05:00)
    assert stored == [
        ("BTC/USDT", interval_start),
        ("ETH/BTC", interval_start),
        ("ETH/USDT", interval_start),
    ]


@pytest.mark.postgres
def test_the_market_data_dags_ingest_a_kraken_market_through_krakens_own_api(
    airflow_env: dict, simulator, fresh_pg
) -> None:
    engine = fresh_pg()
    code = """
        import json, sys, pendulum
        from airflow.dag_processing.dagbag import DagBag
        dags = DagBag(dag_folder="dags").dags
        hour = pendulum.now("UTC").start_of("hour")
        if sys.argv[1] == "market_data":
            run = dags["market_data"].test(logical_date=hour)
        else:
            run = dags["backfill_history"].test(run_conf={"days": 1, "end": hour.isoformat()})
        print(json.dumps({"state": str(run.state), "hour": int(hour.timestamp() * 1000)}))
        """
    with simulator(exchange="kraken", dialect="kraken", shift_to_now=True) as sim:
        env = airflow_env | {
            "CRYPTOBOTS_DB_URL": engine.url.render_as_string(hide_password=False),
            "CRYPTOBOTS_MARKETS": '["kraken:BTC/USDC:1m"]',
            "CRYPTOBOTS_EXCHANGES__KRAKEN__URL": sim.url,
            "CRYPTOBOTS_EXCHANGES__KRAKEN__CCXT_ID": "kraken",
            "CRYPTOBOTS_VAR_DIR": str(Path(airflow_env["AIRFLOW_HOME"]) / "var"),
        }
        hourly = run_python(code.replace("sys.argv[1]", '"market_data"'), env)
        deeper = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code), "backfill_history"],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    assert hourly["state"] == "success"
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT exchange, symbol, ts FROM ohlcv ORDER BY ts")).all()
        gaps = conn.execute(sa.text("SELECT coalesce(sum(missing), 0) FROM ohlcv_gaps")).scalar()
    assert {(exchange, symbol) for exchange, symbol, _ in stored} == {("kraken", "BTC/USDC")}
    assert all(hourly["hour"] - 3_600_000 <= ts < hourly["hour"] for *_, ts in stored)
    assert len(stored) + gaps == 60, "every minute of the hour stored or a gap Kraken has"
    output = deeper.stdout + deeper.stderr
    assert '"state": "failed"' in output, output[-3000:]
    assert "720 most recent candles" in output, output[-3000:]
    assert "up_for_retry" not in output, "asking again would meet the same refusal"
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM ohlcv")).scalar() == len(stored)


@pytest.mark.postgres
def test_backfill_history_dag_stores_the_days_asked_and_a_second_run_fetches_nothing(
    airflow_env: dict, simulator, fresh_pg
) -> None:
    engine = fresh_pg()
    code = """
        import json
        from airflow.dag_processing.dagbag import DagBag
        dag = DagBag(dag_folder="dags").dags["backfill_history"]
        run = dag.test(run_conf={"days": 5, "end": "2019-01-10T00:00"})
        tis = run.get_task_instances()
        print(json.dumps({"state": str(run.state),
                          "results": [ti.xcom_pull(task_ids=ti.task_id, map_indexes=ti.map_index)
                                      for ti in tis]}))
        """
    with simulator() as sim:
        env = airflow_env | {
            "CRYPTOBOTS_DB_URL": engine.url.render_as_string(hide_password=False),
            "CRYPTOBOTS_EXCHANGES__BINANCE__URL": sim.url,
            "CRYPTOBOTS_VAR_DIR": str(Path(airflow_env["AIRFLOW_HOME"]) / "var"),
        }
        first = run_python(code, env)
        second = run_python(code, env)
    assert first["state"] == second["state"] == "success"
    with engine.connect() as conn:
        stored = dict(
            conn.execute(sa.text("SELECT symbol, count(*) FROM ohlcv GROUP BY symbol")).all()
        )
    assert stored == {"BTC/USDT": 120, "ETH/BTC": 120, "ETH/USDT": 120}
    assert sorted(r["market"] for r in first["results"]) == [
        "binance:BTC/USDT:1h", "binance:ETH/BTC:1h", "binance:ETH/USDT:1h",
    ]  # fmt: skip
    assert all(r["inserted"] == 120 for r in first["results"])
    assert all(r["skipped"] == r["chunks"] and r["inserted"] == 0 for r in second["results"])


@pytest.mark.postgres
def test_register_model_dag_registers_a_foreign_policy_and_refuses_a_bad_one_without_retrying(
    airflow_env: dict, fresh_pg, tmp_path: Path
) -> None:
    import numpy as np

    from pipeline.db.upsert import upsert_ohlcv
    from pipeline.models.registry import list_versions
    from tests.support.candles import HOUR, T0, candle
    from tests.support.policies import foreign_model

    engine = fresh_pg()
    closes = 100 * np.exp(np.cumsum(np.random.default_rng(1).normal(0, 0.01, 2500)))
    upsert_ohlcv(engine, [candle(T0 + i * HOUR, float(c)) for i, c in enumerate(closes)])
    policy = str(foreign_model(tmp_path / "policy.onnx"))
    form = {"source": policy, "market": "binance:BTC/USDT:1h", "action_map": "0,1"}
    confs = {
        "good": form | {"features": "ret_1,ret_4,ret_24,rsi_14", "reason": "the desk's model"},
        "wrong_width": form | {"features": "ret_1,ret_4,rsi_14"},
    }
    code = f"""
        import json
        from airflow.dag_processing.dagbag import DagBag
        dag = DagBag(dag_folder="dags").dags["register_model"]
        runs = {{}}
        for label, conf in {confs!r}.items():
            run = dag.test(run_conf=conf)
            [ti] = run.get_task_instances()
            runs[label] = {{"state": str(run.state), "tries": ti.try_number,
                           "result": ti.xcom_pull(task_ids="register")}}
        print(json.dumps(runs))
        """
    env = airflow_env | {
        "CRYPTOBOTS_DB_URL": engine.url.render_as_string(hide_password=False),
        "CRYPTOBOTS_VAR_DIR": str(tmp_path / "var"),
        "CRYPTOBOTS_ARTIFACT_ROOT": f"file://{tmp_path / 'artifacts'}",
        "CRYPTOBOTS_TRAINING__FOLDS": "3",
        "CRYPTOBOTS_TRAINING__VALID_DAYS": "20",
    }
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(done.stdout.strip().splitlines()[-1])
    assert runs["good"]["state"] == "success"
    assert runs["good"]["result"]["version"] == 1
    assert runs["wrong_width"]["state"] == "failed"
    assert runs["wrong_width"]["tries"] == 1, "a refused model is not retried"
    assert "the 3 declared features and the position make 4" in done.stdout + done.stderr
    [version] = list_versions(engine, "binance-btc-usdt-1h")
    lineage = version["metrics"]["external"]
    assert lineage["registered_by"] == "dag_test (airflow)"
    assert lineage["reason"] == "the desk's model"


def test_each_exchange_gets_its_pool_and_a_second_run_changes_nothing(airflow_env: dict) -> None:
    env = airflow_env | {"CRYPTOBOTS_AIRFLOW__EXCHANGE_POOL_SLOTS": "3"}
    command = [sys.executable, "-m", "pipeline", "airflow-pools"]
    for _ in range(2):
        done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    report = run_python(
        """
        import json
        from airflow.models.pool import Pool
        print(json.dumps({p.pool: p.slots for p in Pool.get_pools()}))
        """,
        env,
    )
    assert report["exchange_binance"] == 3


def test_the_readme_airflow_backfill_command_plans_one_run_per_hour(airflow_env: dict) -> None:
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run(
        [*airflow, "dags", "reserialize"], env=airflow_env, check=True, capture_output=True
    )
    done = subprocess.run(
        [
            *airflow,
            "backfill",
            "create",
            "--dag-id",
            "market_data",
            "--from-date",
            "2020-01-01T00:00",
            "--to-date",
            "2020-01-01T03:00",
            "--dry-run",
        ],
        env=airflow_env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    planned = [line for line in done.stdout.splitlines() if "2020-01-01" in line]
    assert len(planned) >= 3


@pytest.mark.postgres
def test_train_dag_then_promote_dag_make_the_best_candidate_champion(
    airflow_env: dict, simulator, fresh_pg
) -> None:
    from datetime import UTC, datetime

    from pipeline.data.backfill import backfill
    from pipeline.settings import Market
    from tests.support.exchange import exchange_client

    def ms(text: str) -> int:
        return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)

    engine = fresh_pg()
    btc = Market.model_validate("binance:BTC/USDT:1h")
    with simulator() as sim:
        backfill(exchange_client(sim.url), engine, btc, ms("2019-10-01"), ms("2020-01-01"))
    env = airflow_env | {
        "CRYPTOBOTS_DB_URL": engine.url.render_as_string(hide_password=False),
        "CRYPTOBOTS_VAR_DIR": str(Path(airflow_env["AIRFLOW_HOME"]) / "var"),
        "CRYPTOBOTS_PROMOTION__WINDOW_DAYS": "14",
        "CRYPTOBOTS_PROMOTION__MIN_DSR": "0",  # a tiny budget: the gates' wiring, not evidence
        "CRYPTOBOTS_PROMOTION__MAX_FOLD_DRAWDOWN": "1",
    }
    report = run_python(
        """
        import json
        from airflow.dag_processing.dagbag import DagBag
        dag = DagBag(dag_folder="dags").dags["train"]
        run = dag.test(run_conf={
            "markets": ["binance:BTC/USDT:1h"], "valid_end": "2020-01-01",
            "train_days": 30, "valid_days": 14, "dqn_steps": 2000, "a2c_steps": 20000,
            "episode_length": 10, "folds": 2, "ensemble": 2, "algorithms": ["dqn", "a2c"],
        })
        select = [ti for ti in run.get_task_instances() if ti.task_id == "select"][0]
        print(json.dumps({
            "state": str(run.state),
            "tasks": sorted((ti.task_id, ti.map_index, str(ti.state))
                            for ti in run.get_task_instances()),
            "best": select.xcom_pull(task_ids="select"),
        }))
        """,
        env,
    )
    assert report["state"] == "success", report["tasks"]
    states = {(task, index): state for task, index, state in report["tasks"]}
    assert [states[("train_agent", i)] for i in range(4)] == ["success"] * 4
    with engine.connect() as conn:
        runs = conn.execute(
            sa.text("SELECT id, algorithm, status, orchestrator_run FROM training_runs")
        ).all()
        versions = conn.execute(
            sa.text("SELECT version, training_run, metrics FROM model_versions")
        ).all()
    assert (
        sorted(run[1:3] for run in runs) == [("a2c", "evaluated")] * 2 + [("dqn", "evaluated")] * 2
    )
    assert all(run[3] for run in runs)
    best = report["best"]
    assert best["run_id"] in {run[0] for run in runs}
    assert best["folds"] == 2
    assert len(versions) == 2, "only the newest fold's models are candidates"
    chosen = next(v for v in versions if v[1] == best["run_id"])
    evidence = chosen[2]["walk_forward"]
    assert len(evidence["folds"]) == 2
    assert evidence["algorithm"] == best["algorithm"]
    assert evidence["confidence"]["n_trials"] == 2
    assert 0 <= evidence["confidence"]["dsr"] <= evidence["confidence"]["psr"] <= 1

    promoted = run_python(
        """
        import json
        from airflow.dag_processing.dagbag import DagBag
        dag = DagBag(dag_folder="dags").dags["promote"]
        run = dag.test(run_conf={"version": 0})
        report = [ti for ti in run.get_task_instances() if ti.task_id == "report"][0]
        print(json.dumps({"state": str(run.state), "report": report.xcom_pull(task_ids="report")}))
        """,
        env,
    )
    assert promoted["state"] == "success"
    with engine.connect() as conn:
        champion = conn.execute(
            sa.text("SELECT version FROM model_aliases WHERE alias = 'champion'")
        ).scalar()
        event = conn.execute(sa.text("SELECT who, forced FROM promotion_events")).one()
    assert promoted["report"].endswith(f"-> v{champion}")
    assert event[0].startswith("airflow:")
    assert event[1] is False
