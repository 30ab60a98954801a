"""Table definitions (SQLAlchemy Core). Names and key columns are a contract.

Timestamps of candles (`ts`) are integer milliseconds since the Unix epoch, UTC,
of the candle's open, exactly as exchanges and ccxt give them. Prices and volumes
are float64 (DOUBLE PRECISION): any decimal the exchanges print (at most 15
significant digits) round-trips exactly, and every consumer computes in float64.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

Price = sa.Float(precision=53).with_variant(sa.Double(), "postgresql")
Timestamp = sa.DateTime(timezone=True)
# Autoincrement ids: BIGINT on Postgres, INTEGER (the rowid alias) on SQLite.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

MARKET_KEY = ("exchange", "symbol", "timeframe")
OHLCV_VALUES = ("open", "high", "low", "close", "volume")


def _market_columns(nullable: bool = False) -> list[sa.Column]:
    return [
        sa.Column("exchange", sa.String(32), nullable=nullable),
        sa.Column("symbol", sa.String(32), nullable=nullable),
        sa.Column("timeframe", sa.String(8), nullable=nullable),
    ]


ohlcv = sa.Table(
    "ohlcv",
    metadata,
    *_market_columns(),
    sa.Column("ts", sa.BigInteger, nullable=False, comment="candle open, ms since epoch UTC"),
    sa.Column("open", Price, nullable=False),
    sa.Column("high", Price, nullable=False),
    sa.Column("low", Price, nullable=False),
    sa.Column("close", Price, nullable=False),
    sa.Column("volume", Price, nullable=False),
    sa.Column("ingested_at", Timestamp, nullable=False, server_default=sa.func.now()),
    sa.PrimaryKeyConstraint("exchange", "symbol", "timeframe", "ts"),
    comment="closed candles, validated; one row per market and open time",
)

ohlcv_quarantine = sa.Table(
    "ohlcv_quarantine",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    *_market_columns(nullable=True),
    sa.Column("ts", sa.BigInteger, nullable=True),
    sa.Column("open", Price, nullable=True),
    sa.Column("high", Price, nullable=True),
    sa.Column("low", Price, nullable=True),
    sa.Column("close", Price, nullable=True),
    sa.Column("volume", Price, nullable=True),
    sa.Column("raw", sa.Text, nullable=True, comment="the row as received, JSON"),
    sa.Column("reason", sa.Text, nullable=False, comment="which check failed and why"),
    sa.Column("run_id", sa.String(250), nullable=True, comment="ingest run that saw it"),
    sa.Column("quarantined_at", Timestamp, nullable=False, server_default=sa.func.now()),
    sa.Column(
        "fingerprint",
        sa.String(64),
        nullable=False,
        server_default="",
        comment="sha256 of market, raw row and reason",
    ),
    sa.Index("ix_ohlcv_quarantine_market_ts", "exchange", "symbol", "timeframe", "ts"),
    sa.UniqueConstraint("fingerprint", name="uq_ohlcv_quarantine_fingerprint"),
    comment="rows that failed validation, kept with the reason; never read by training",
)

ohlcv_gaps = sa.Table(
    "ohlcv_gaps",
    metadata,
    *_market_columns(),
    sa.Column("start_ts", sa.BigInteger, nullable=False, comment="first missing candle open"),
    sa.Column("end_ts", sa.BigInteger, nullable=False, comment="open after the last missing one"),
    sa.Column("missing", sa.Integer, nullable=False, comment="number of absent candles"),
    sa.Column("detected_at", Timestamp, nullable=False, server_default=sa.func.now()),
    sa.PrimaryKeyConstraint("exchange", "symbol", "timeframe", "start_ts"),
    sa.CheckConstraint("end_ts > start_ts", name="end_after_start"),
    comment="candles the exchange confirmed absent after re-requests (real gaps)",
)

training_runs = sa.Table(
    "training_runs",
    metadata,
    sa.Column("id", sa.String(64), nullable=False),
    sa.Column("algorithm", sa.String(16), nullable=False),
    sa.Column("market", sa.String(80), nullable=False, comment="exchange:BASE/QUOTE:tf"),
    sa.Column(
        "status", sa.String(16), nullable=False, comment="running, trained, evaluated or failed"
    ),
    sa.Column("params", sa.JSON, nullable=False, comment="every hyperparameter"),
    sa.Column("feature_spec", sa.JSON, nullable=True, comment="FeatureSpec with statistics"),
    sa.Column("action_map", sa.JSON, nullable=True, comment="action index -> position"),
    sa.Column("train_start", Timestamp, nullable=False),
    sa.Column("train_end", Timestamp, nullable=False, comment="exclusive"),
    sa.Column("valid_start", Timestamp, nullable=False),
    sa.Column("valid_end", Timestamp, nullable=False, comment="exclusive"),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("device", sa.String(160), nullable=True, comment="what TensorFlow trained on"),
    sa.Column("env_steps", sa.BigInteger, nullable=True),
    sa.Column("updates", sa.BigInteger, nullable=True),
    sa.Column("train_seconds", sa.Float, nullable=True),
    sa.Column("metrics", sa.JSON, nullable=True, comment="validation metrics of the policy"),
    sa.Column("baselines", sa.JSON, nullable=True, comment="baseline metrics, same window"),
    sa.Column("artifacts", sa.JSON, nullable=True, comment="name -> URI"),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("code_version", sa.String(64), nullable=True),
    sa.Column("orchestrator_run", sa.String(250), nullable=True, comment="Airflow run id"),
    sa.Column("started_at", Timestamp, nullable=False, server_default=sa.func.now()),
    sa.Column("finished_at", Timestamp, nullable=True),
    sa.PrimaryKeyConstraint("id"),
    sa.Index("ix_training_runs_market_started", "market", "started_at"),
    comment="one row per trained agent: lineage of every model",
)

model_versions = sa.Table(
    "model_versions",
    metadata,
    sa.Column("name", sa.String(80), nullable=False, comment="model name (one per market)"),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("algorithm", sa.String(16), nullable=False),
    sa.Column("artifact_uri", sa.Text, nullable=False, comment="content-addressed ONNX"),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("opset", sa.Integer, nullable=False),
    sa.Column("feature_spec", sa.JSON, nullable=False),
    sa.Column("action_map", sa.JSON, nullable=False),
    sa.Column("metrics", sa.JSON, nullable=True),
    sa.Column("training_run", sa.String(64), nullable=True),
    sa.Column("status", sa.String(16), nullable=False, comment="candidate or archived"),
    sa.Column("created_at", Timestamp, nullable=False, server_default=sa.func.now()),
    sa.PrimaryKeyConstraint("name", "version"),
    comment="every registered ONNX policy",
)

model_aliases = sa.Table(
    "model_aliases",
    metadata,
    sa.Column("name", sa.String(80), nullable=False),
    sa.Column("alias", sa.String(32), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("generation", sa.Integer, nullable=False, comment="bumped by every move"),
    sa.Column("updated_at", Timestamp, nullable=False, server_default=sa.func.now()),
    sa.PrimaryKeyConstraint("name", "alias"),
    sa.ForeignKeyConstraint(
        ["name", "version"],
        ["model_versions.name", "model_versions.version"],
        name="fk_model_aliases_name_model_versions",
    ),
    comment="named pointers to versions; 'champion' is what serving trades",
)

promotion_events = sa.Table(
    "promotion_events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(80), nullable=False),
    sa.Column("alias", sa.String(32), nullable=False),
    sa.Column("from_version", sa.Integer, nullable=True),
    sa.Column("to_version", sa.Integer, nullable=False),
    sa.Column("action", sa.String(16), nullable=False, comment="promote or rollback"),
    sa.Column("who", sa.String(120), nullable=False),
    sa.Column("at", Timestamp, nullable=False, server_default=sa.func.now()),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("gates", sa.JSON, nullable=True),
    sa.Column("forced", sa.Boolean, nullable=False),
    sa.Index("ix_promotion_events_name_at", "name", "at"),
    comment="audit of every alias move",
)

# The trader's state (serving). `account` is "paper" or "live": they never mix.
# `market` is the text form exchange:BASE/QUOTE:timeframe; candle times are open times
# in ms like ohlcv.ts.

decisions = sa.Table(
    "decisions",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("account", sa.String(8), nullable=False),
    sa.Column("market", sa.String(80), nullable=False),
    sa.Column("candle_ts", sa.BigInteger, nullable=False, comment="open time of the candle"),
    sa.Column("model_name", sa.String(80), nullable=False),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("inputs_sha256", sa.String(64), nullable=False, comment="of the float32 obs"),
    sa.Column("outputs", sa.JSON, nullable=False, comment="q_values or logits"),
    sa.Column("action", sa.Integer, nullable=False),
    sa.Column("target", Price, nullable=False, comment="target position, fraction of equity"),
    sa.Column("price", Price, nullable=False, comment="close of the candle"),
    sa.Column("latency_ms", Price, nullable=False, comment="candle available -> broker"),
    sa.Column("outcome", sa.String(16), nullable=False, comment="order, hold or denied"),
    sa.Column("reason", sa.Text, nullable=True, comment="why denied or held"),
    sa.Column("client_order_id", sa.String(40), nullable=True),
    sa.Column("created_at", Timestamp, nullable=False, server_default=sa.func.now()),
    sa.UniqueConstraint("account", "market", "candle_ts", name="uq_decisions_candle"),
    comment="one decision per market and candle, whatever it led to",
)

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("client_order_id", sa.String(40), nullable=False),
    sa.Column("account", sa.String(8), nullable=False),
    sa.Column("market", sa.String(80), nullable=False),
    sa.Column("decision_id", sa.BigInteger, nullable=True),
    sa.Column("side", sa.String(4), nullable=False),
    sa.Column("type", sa.String(12), nullable=False),
    sa.Column("amount", Price, nullable=False),
    sa.Column("price", Price, nullable=True, comment="limit price; None for market orders"),
    sa.Column(
        "status",
        sa.String(16),
        nullable=False,
        comment="pending (persisted, maybe not sent), open, filled, partial, canceled, "
        "rejected, expired",
    ),
    sa.Column("exchange_order_id", sa.String(64), nullable=True),
    sa.Column("filled", Price, nullable=False, server_default="0"),
    sa.Column("average", Price, nullable=True),
    sa.Column("fee", Price, nullable=False, server_default="0"),
    sa.Column("fee_currency", sa.String(16), nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("created_at", Timestamp, nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", Timestamp, nullable=False, server_default=sa.func.now()),
    sa.PrimaryKeyConstraint("client_order_id"),
    sa.Index("ix_orders_account_status", "account", "status"),
    comment="every order, written before it is sent; the client order id is deterministic",
)

fills = sa.Table(
    "fills",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("client_order_id", sa.String(40), nullable=False),
    sa.Column("trade_id", sa.String(64), nullable=False),
    sa.Column("ts", sa.BigInteger, nullable=False),
    sa.Column("price", Price, nullable=False),
    sa.Column("amount", Price, nullable=False),
    sa.Column("fee", Price, nullable=False),
    sa.Column("fee_currency", sa.String(16), nullable=True),
    sa.UniqueConstraint("client_order_id", "trade_id", name="uq_fills_trade"),
    comment="executions; a fill is applied to the position exactly once",
)

positions = sa.Table(
    "positions",
    metadata,
    sa.Column("account", sa.String(8), nullable=False),
    sa.Column("market", sa.String(80), nullable=False),
    sa.Column("base", Price, nullable=False, comment="amount held (negative = short)"),
    sa.Column("quote", Price, nullable=False, comment="cash of this market's sub-account"),
    sa.Column("target", Price, nullable=False, comment="last target, fraction of equity"),
    sa.Column("borrowed", Price, nullable=False, server_default="0", comment="short: base owed"),
    sa.Column("carried_to", sa.BigInteger, nullable=True, comment="borrow fees charged up to (ms)"),
    sa.Column("updated_at", Timestamp, nullable=False, server_default=sa.func.now()),
    sa.PrimaryKeyConstraint("account", "market"),
    comment="the position and cash of each market the trader trades",
)

equity = sa.Table(
    "equity",
    metadata,
    sa.Column("account", sa.String(8), nullable=False),
    sa.Column("market", sa.String(80), nullable=False),
    sa.Column("ts", sa.BigInteger, nullable=False, comment="candle open time"),
    sa.Column("equity", Price, nullable=False, comment="quote + base x price"),
    sa.Column("base", Price, nullable=False),
    sa.Column("quote", Price, nullable=False),
    sa.Column("price", Price, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False, server_default=sa.func.now()),
    sa.PrimaryKeyConstraint("account", "market", "ts"),
    comment="one equity point per market and decision candle",
)

trader_leases = sa.Table(
    "trader_leases",
    metadata,
    sa.Column("account", sa.String(8), nullable=False),
    sa.Column("market", sa.String(80), nullable=False),
    sa.Column("holder", sa.String(200), nullable=False, comment="host:pid:nonce of the trader"),
    sa.Column("token", sa.BigInteger, nullable=False, comment="fencing token, +1 per takeover"),
    sa.Column("expires_at", sa.BigInteger, nullable=False, comment="ms; renewed while alive"),
    sa.Column("acquired_at", sa.BigInteger, nullable=False, comment="ms of the last takeover"),
    sa.PrimaryKeyConstraint("account", "market"),
    comment="which trader may trade each market: every order write checks its token",
)

risk_events = sa.Table(
    "risk_events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("account", sa.String(8), nullable=False),
    sa.Column("market", sa.String(80), nullable=True, comment="None: the whole trader"),
    sa.Column("from_state", sa.String(16), nullable=False),
    sa.Column("to_state", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("at", Timestamp, nullable=False, server_default=sa.func.now()),
    comment="every transition of the risk gate (ACTIVE, REDUCING, HALTED)",
)

# Arbitrage (serving --strategy arbitrage). An opportunity is one detected cycle; its
# legs are orders written before they are sent, with client ids derived from
# (opportunity id, leg); unwind legs close what a failed leg left open.

arb_opportunities = sa.Table(
    "arb_opportunities",
    metadata,
    sa.Column("id", sa.String(32), nullable=False, comment="sha256 of account, cycle, time"),
    sa.Column("account", sa.String(8), nullable=False),
    sa.Column("exchange", sa.String(32), nullable=False),
    sa.Column("home", sa.String(16), nullable=False),
    sa.Column("cycle", sa.JSON, nullable=False, comment="[[symbol, side, source, target], ...]"),
    sa.Column("detected_ms", sa.BigInteger, nullable=False, comment="books seen, ms UTC"),
    sa.Column("edge_bps", Price, nullable=False, comment="top-of-book edge after fees"),
    sa.Column("expected_start", Price, nullable=False, comment="home put in"),
    sa.Column("expected_end", Price, nullable=False, comment="home expected back"),
    sa.Column("expected_bps", Price, nullable=False),
    sa.Column(
        "status",
        sa.String(16),
        nullable=False,
        comment="executing, unwinding, done (cycle completed) or unwound (a leg failed)",
    ),
    sa.Column("realized_start", Price, nullable=True, comment="home actually spent"),
    sa.Column("realized_end", Price, nullable=True, comment="home actually received"),
    sa.Column("realized_profit", Price, nullable=True),
    sa.Column("failed_leg", sa.Integer, nullable=True, comment="the leg that failed, if any"),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("latency_ms", Price, nullable=True, comment="books seen -> first leg handed over"),
    sa.Column("created_at", Timestamp, nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", Timestamp, nullable=False, server_default=sa.func.now()),
    sa.Column(
        "exposure_seconds",
        Price,
        nullable=True,
        comment="cross trades: legs answered -> exposure closed",
    ),
    sa.PrimaryKeyConstraint("id"),
    sa.Index("ix_arb_opportunities_account_status", "account", "status"),
    comment="every arbitrage cycle started: expected vs realized",
)

arb_legs = sa.Table(
    "arb_legs",
    metadata,
    sa.Column("client_order_id", sa.String(40), nullable=False),
    sa.Column("opportunity_id", sa.String(32), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False, comment="0.. the cycle's legs, 10.. unwinds"),
    sa.Column("kind", sa.String(8), nullable=False, comment="cycle or unwind"),
    sa.Column("symbol", sa.String(32), nullable=False),
    sa.Column("side", sa.String(4), nullable=False),
    sa.Column("type", sa.String(8), nullable=False, comment="limit (IOC) or market"),
    sa.Column("source", sa.String(16), nullable=False, comment="currency paid"),
    sa.Column("target", sa.String(16), nullable=False, comment="currency received"),
    sa.Column("amount", Price, nullable=False, comment="base amount asked"),
    sa.Column("price", Price, nullable=True, comment="limit price; None for market"),
    sa.Column(
        "status",
        sa.String(16),
        nullable=False,
        comment="pending (written, maybe sent), filled, partial, expired, rejected",
    ),
    sa.Column("filled", Price, nullable=False, server_default="0"),
    sa.Column("cost", Price, nullable=False, server_default="0", comment="quote amount"),
    sa.Column("fee", Price, nullable=False, server_default="0"),
    sa.Column("fee_currency", sa.String(16), nullable=True),
    sa.Column("spent", Price, nullable=False, server_default="0", comment="source paid"),
    sa.Column("received", Price, nullable=False, server_default="0", comment="target, net"),
    sa.Column("exchange_order_id", sa.String(64), nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("created_at", Timestamp, nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", Timestamp, nullable=False, server_default=sa.func.now()),
    sa.Column(
        "venue",
        sa.String(32),
        nullable=True,
        comment="exchange the leg went to; None: its opportunity's exchange",
    ),
    sa.PrimaryKeyConstraint("client_order_id"),
    sa.UniqueConstraint("opportunity_id", "seq", name="uq_arb_legs_seq"),
    comment="every leg and unwind order, written before it is sent",
)

arb_fills = sa.Table(
    "arb_fills",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("client_order_id", sa.String(40), nullable=False),
    sa.Column("trade_id", sa.String(64), nullable=False),
    sa.Column("ts", sa.BigInteger, nullable=False),
    sa.Column("price", Price, nullable=False),
    sa.Column("amount", Price, nullable=False),
    sa.Column("fee", Price, nullable=False),
    sa.Column("fee_currency", sa.String(16), nullable=True),
    sa.UniqueConstraint("client_order_id", "trade_id", name="uq_arb_fills_trade"),
    comment="executions of arbitrage legs",
)

arb_balances = sa.Table(
    "arb_balances",
    metadata,
    sa.Column("account", sa.String(8), nullable=False),
    sa.Column("exchange", sa.String(32), nullable=False),
    sa.Column("asset", sa.String(16), nullable=False),
    sa.Column("amount", Price, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False, server_default=sa.func.now()),
    sa.PrimaryKeyConstraint("account", "exchange", "asset"),
    comment="the paper arbitrage account's balances (live balances are the exchange's)",
)

arbitrage_reports = sa.Table(
    "arbitrage_reports",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(16), nullable=False, comment="triangle or cross"),
    sa.Column("group_name", sa.String(250), nullable=False, comment="the studied markets"),
    sa.Column("interval_start", Timestamp, nullable=False, comment="first candle open studied"),
    sa.Column("interval_end", Timestamp, nullable=False, comment="exclusive"),
    sa.Column("stats", sa.JSON, nullable=False, comment="the study's result for the group"),
    sa.Column("plot_path", sa.Text, nullable=True, comment="PNG under var_dir"),
    sa.Column("created_at", Timestamp, nullable=False, server_default=sa.func.now()),
    sa.UniqueConstraint(
        "kind", "group_name", "interval_start", name="uq_arbitrage_reports_group_interval"
    ),
    sa.Index("ix_arbitrage_reports_interval_start", "interval_start"),
    comment="the arbitrage_report DAG's daily study of each triangle and venue group",
)
