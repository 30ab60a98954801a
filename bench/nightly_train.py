"""Wall time of one default nightly `train` run, beside the single-seed run it replaced.

Both run the functions the `train` DAG's tasks call, one after the other as a single
worker would (snapshot, train each job, evaluate each run, select), on binance
BTC/USDT 1h candles backfilled through the simulator into a scratch Postgres
database, ending 2021-03-15:

- nightly (today's defaults, `TrainingSettings`): `folds` walk-forward folds per
  algorithm, each an ensemble of `ensemble` seeds, positions sized to the volatility
  target, selection by walk-forward score with its evidence and expectations;
- baseline (before issue 15): one fold, one seed per algorithm, unsized, selection by
  validation Sharpe.

Floor (issue 15): the nightly run within 15 minutes on two CPU cores.

    python -m bench.nightly_train [--end 2021-03-15] [--days N]
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import Floors, scratch_database
from pipeline.arguments import Parser, positive_int
from pipeline.data.backfill import backfill
from pipeline.exchanges.client import open_exchange
from pipeline.exchanges.simulator.app import SimulatorConfig, running
from pipeline.learn.selection import select_best
from pipeline.settings import Market, Settings
from pipeline.tasks import train as tasks
from pipeline.timeutil import DAY_MS

MARKET = Market.model_validate("binance:BTC/USDT:1h")
FLOOR_SECONDS = 15 * 60
FIRST_CANDLE = "2017-08-17"


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def nightly(settings: Settings, end_ms: int, folds: int, changes: dict[str, Any]) -> dict:
    """The train DAG's tasks in a row; returns the selection and the seconds taken."""
    t = settings.training
    started = time.perf_counter()
    snapshots = tasks.snapshot(settings, [str(MARKET)], end_ms, t.train_days, t.valid_days, folds)
    runs = [
        tasks.train_agent(settings, {"snapshot": snap, "algorithm": algorithm, "changes": changes})
        for snap in snapshots
        for algorithm in t.algorithms
    ]
    evaluations = [tasks.evaluate(settings, run_id) for run_id in runs]
    if folds > 1:
        chosen = tasks.select(settings, [e["run_id"] for e in evaluations])
    else:
        from pipeline.db.engine import create_engine

        engine = create_engine(settings.db_url)
        chosen = select_best(engine, [e["run_id"] for e in evaluations])
        engine.dispose()
    return {"seconds": time.perf_counter() - started, "runs": len(runs), "chosen": chosen}


def measure(
    end: str, days: int | None = None, training: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Backfill `days` days before `end` (from the first recorded candle when None), then
    the baseline and the nightly run with `training` over the defaults; their figures."""
    end_ms = _ms(end)
    start_ms = _ms(FIRST_CANDLE) if days is None else end_ms - days * DAY_MS
    with scratch_database("bench_nightly") as engine, tempfile.TemporaryDirectory() as var:
        url = engine.url.render_as_string(hide_password=False)
        data_dir = Settings().data_dir
        if data_dir is None:
            raise SystemExit("no recorded market data: set CRYPTOBOTS_DATA_DIR")
        with running(SimulatorConfig(data_dir=Path(data_dir))) as sim:
            settings = Settings(
                db_url=url,
                var_dir=Path(var),
                exchanges={"binance": {"ccxt_id": "binance", "url": sim.url}},
                training=Settings().training.model_copy(update=training or {}),
            )
            exchange = open_exchange(settings, "binance")
            backfill(exchange, engine, MARKET, start_ms, end_ms)
        baseline_unsized = settings.model_copy(
            update={"training": settings.training.model_copy(update={"target_volatility": None})}
        )
        baseline = nightly(baseline_unsized, end_ms, 1, {"ensemble": 1, "seed": 0})
        new = nightly(settings, end_ms, settings.training.folds, {})
    return {
        "folds": settings.training.folds,
        "ensemble": settings.training.ensemble,
        "baseline": baseline,
        "nightly": new,
        "ratio": new["seconds"] / baseline["seconds"],
    }


def report(figures: dict[str, Any]) -> Floors:
    """Print both runs, their ratio, the selection and the floor's verdict."""
    baseline, new = figures["baseline"], figures["nightly"]
    floors = Floors()
    verdict = floors.check("nightly wall time", new["seconds"] <= FLOOR_SECONDS)
    print(f"{'run':<44} {'jobs':>5} {'wall':>9}")
    print(
        f"{'baseline: 1 fold, 1 seed, unsized':<44} {baseline['runs']:>5} "
        f"{baseline['seconds']:>8.1f}s"
    )
    label = f"nightly: {figures['folds']} folds x ensemble {figures['ensemble']}, sized"
    print(f"{label:<44} {new['runs']:>5} {new['seconds']:>8.1f}s")
    floor = f"{FLOOR_SECONDS / 60:.0f} min"
    print(f"ratio nightly / baseline: {figures['ratio']:.1f}x; floor <= {floor}: {verdict}")
    chosen = new["chosen"]
    print(
        f"selected {chosen['algorithm']}: median fold Sharpe {chosen['median_sharpe']:.2f}, "
        f"worst fold drawdown {chosen['worst_drawdown']:.1%}, PSR {chosen['psr']:.2f}, "
        f"DSR {chosen['dsr']:.2f}"
    )
    return floors


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="python -m bench.nightly_train", description=__doc__)
    parser.add_argument("--end", default="2021-03-15", help="end of the newest fold (UTC)")
    parser.add_argument(
        "--days",
        type=positive_int,
        default=None,
        help="days backfilled (default: from the first candle)",
    )
    args = parser.parse_args(argv)
    report(measure(args.end, args.days)).exit()


if __name__ == "__main__":
    main()
