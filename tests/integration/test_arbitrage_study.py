"""The arbitrage study: hand-computed edges and spreads, dropped slots, runs, sizes, and the
study over candles ingested through the simulator, from the library and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.arbitrage.study import study_group
from pipeline.arbitrage.study_config import CAVEATS, Group
from pipeline.arbitrage.study_ingest import ingest_recorded
from pipeline.db.schema import ohlcv, ohlcv_quarantine
from pipeline.settings import Market, Settings
from tests.support.arbitrage_study import MINUTE, config
from tests.support.paths import REPO

# --- on stored candles -------------------------------------------------------------------

START = 1_752_364_800_000  # 2025-07-13T00:00Z: the recorded 1m triangle
WINDOW = (START, START + 120 * MINUTE)
ONE_M_TRIANGLE = Group(
    "triangle",
    tuple(Market.model_validate(f"binance:{s}:1m") for s in ("BTC/USDT", "SOL/USDT", "SOL/BTC")),
)


@pytest.fixture(scope="module")
def stored(migrated_engine: Engine, data_dir: Path, tmp_path_factory) -> Engine:
    """Two hours of the recorded 1m triangle, ingested through the simulator."""
    settings = Settings(
        var_dir=tmp_path_factory.mktemp("var"),
        db_url=migrated_engine.url.render_as_string(hide_password=False),
        data_dir=data_dir,
    )
    done = ingest_recorded(
        settings, migrated_engine, [ONE_M_TRIANGLE], {ONE_M_TRIANGLE.slug: WINDOW}, lambda _: None
    )
    assert [d["inserted"] for d in done] == [120, 120, 120]
    return migrated_engine


def test_study_of_stored_candles_reports_every_slot_and_draws_the_plot(stored: Engine, tmp_path):
    result = study_group(stored, ONE_M_TRIANGLE, WINDOW, config(), tmp_path / "t.png")
    assert (result["slots"], result["observations"]) == (120, 120)
    assert result["dropped"]["missing"] == result["dropped"]["quarantined"] == 0
    assert [s["label"] for s in result["series"]] == ["USDT>BTC>SOL>USDT", "USDT>SOL>BTC>USDT"]
    p50 = result["best"]["distribution"]["percentiles"]["p50"]
    assert -30.0 < p50 < -25.0  # three 10 bps fees on prices that agree within a few bps
    assert Path(result["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(result)


def test_study_drops_the_slot_of_a_candle_moved_to_quarantine(stored: Engine):
    sol_btc = ONE_M_TRIANGLE.markets[2]
    ts = START + 30 * MINUTE
    key = sa.and_(
        ohlcv.c.exchange == sol_btc.exchange,
        ohlcv.c.symbol == sol_btc.symbol,
        ohlcv.c.timeframe == sol_btc.timeframe,
        ohlcv.c.ts == ts,
    )
    with stored.begin() as conn:
        row = conn.execute(sa.select(ohlcv).where(key)).one()._mapping
        conn.execute(ohlcv.delete().where(key))
        conn.execute(
            ohlcv_quarantine.insert().values(
                **{k: row[k] for k in ("exchange", "symbol", "timeframe", "ts", "close")},
                reason="test: bad print",
                fingerprint="test-bad-print",
            )
        )
    try:
        result = study_group(stored, ONE_M_TRIANGLE, WINDOW, config(threshold_bps=-1e9))
        assert result["observations"] == 119
        assert result["dropped"] == {
            "missing": 0,
            "quarantined": 1,
            "by_market": {
                "binance:BTC/USDT:1m": {"missing": 0, "quarantined": 0},
                "binance:SOL/USDT:1m": {"missing": 0, "quarantined": 0},
                "binance:SOL/BTC:1m": {"missing": 1, "quarantined": 1},
            },
        }
        assert result["best"]["above"]["count"] == 119
        assert result["best"]["runs"]["count"] == 2  # the dropped minute splits the run
    finally:
        with stored.begin() as conn:
            conn.execute(
                ohlcv_quarantine.delete().where(ohlcv_quarantine.c.fingerprint == "test-bad-print")
            )
            conn.execute(ohlcv.insert().values(**dict(row)))


def test_cli_study_ingests_writes_pngs_and_report_and_prints_the_caveats(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOBOTS_")} | {
        "CRYPTOBOTS_VAR_DIR": str(tmp_path / "var"),
        "CRYPTOBOTS_ARBITRAGE__TRIANGLES": json.dumps(
            [["binance:BTC/USDT:1m", "binance:SOL/USDT:1m", "binance:SOL/BTC:1m"]]
        ),
        "CRYPTOBOTS_ARBITRAGE__VENUE_GROUPS": json.dumps(
            [["bitstamp:BTC/USD:1h", "gemini:BTC/USD:1h"]]
        ),
    }
    out = tmp_path / "report"
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "arbitrage", "study", "--days", "1", "--out", str(out)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for caveat in CAVEATS:
        assert caveat in done.stdout
    assert "dropped" in done.stdout
    report = json.loads((out / "report.json").read_text())
    assert [(g["kind"], g["observations"]) for g in report["groups"]] == [
        ("triangle", 1_080),  # the whole recorded day (18 h): shorter than --days 1
        ("cross", 24),
    ]
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == 2
    assert all((out / name).read_bytes()[:4] == b"\x89PNG" for name in pngs)
    assert (out / "report.txt").read_text().startswith("Arbitrage study on stored candles")
