"""`models register`: a policy trained outside the pipeline brought in as a candidate
version, after the checks of `pipeline.models.external` and a run on real observations
of its market. Opens the database, returns plain values."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.settings import Settings

if TYPE_CHECKING:
    import numpy as np
    from sqlalchemy.engine import Engine

    from pipeline.learn.features.spec import FeatureSpec
    from pipeline.settings import Market

OBSERVATIONS = 1_000  # real observations the model must score finitely before it is stored


def register_external(
    settings: Settings,
    source: str,
    market: str,
    *,
    features: Sequence[str],
    action_map: Sequence[float],
    registered_by: str,
    sizing: str = "none",
    position_rule: str = "argmax",
    reason: str | None = None,
) -> dict[str, Any]:
    """Fetch `source` (a path, any fsspec URL or an MLflow model URI), adopt it under the
    model contract, run it on the market's stored candles, judge it on the nightly's
    walk-forward folds, and register it as a candidate of the market's model with that
    evidence; nothing is stored unless every check passes (too little history for the
    folds included).
    `sizing`: none, or target (the training settings' volatility target)."""
    import tempfile

    from pipeline.db.engine import opened
    from pipeline.models.external import adopt, check_finite, declared_sizing
    from pipeline.models.external_evidence import external_evidence, trial_sharpes
    from pipeline.models.registry import model_name, register
    from pipeline.models.sources import fetch_source
    from pipeline.settings import Market

    parsed = Market.model_validate(market)
    t = settings.training
    sizes = declared_sizing(sizing, t.target_volatility, t.volatility_features)
    with tempfile.TemporaryDirectory() as folder:
        local = fetch_source(source, Path(folder), settings.mlflow_tracking_uri)
        adopted = Path(folder) / "adopted.onnx"
        lineage = adopt(
            local, adopted, market=market, features=features, action_map=action_map,
            origin=source, registered_by=registered_by, sizing=sizes,
            position_rule=position_rule, reason=reason,
        )  # fmt: skip
        with opened(settings.db_url) as engine:
            observations = real_observations(engine, parsed, lineage.feature_spec, action_map)
            what = f"external model {source}"
            check_finite(adopted, observations, what)
            name = model_name(market)
            trials = trial_sharpes(engine, name)
            judged = external_evidence(settings, engine, adopted, lineage, trials, what)
            version = register(
                engine, settings.artifact_root, adopted, name,
                metrics={"external": dict(lineage.data_window), **judged},
            )  # fmt: skip
    evidence = judged["walk_forward"]
    return {
        "name": name,
        "version": version,
        "algorithm": lineage.algorithm,
        "sizing": sizes,
        "sha256": lineage.data_window["sha256"],
        "origin": source,
        "observations": len(observations),
        "folds": len(evidence["folds"]),
        "median_fold_sharpe": evidence["median_sharpe"],
        "worst_fold_drawdown": evidence["worst_drawdown"],
        "psr": evidence["confidence"]["psr"],
        "dsr": evidence["confidence"]["dsr"],
        "trials": evidence["confidence"]["n_trials"],
    }


def real_observations(
    engine: Engine, market: Market, spec: FeatureSpec, action_map: Sequence[float]
) -> np.ndarray:
    """Feature rows of the market's most recent stored candles, each with every position
    of `action_map`, at least OBSERVATIONS of them; ModelRejected naming the market when
    too few candles are stored."""
    from pipeline.errors import ModelRejected
    from pipeline.learn.export import parity_observations
    from pipeline.learn.features.candles import fill_gaps
    from pipeline.learn.features.compute import compute_features
    from pipeline.learn.snapshot import latest_candle_end, load_candles

    rows = -(-OBSERVATIONS // len(action_map)) + spec.window
    end = latest_candle_end(engine, market)
    if end is None:
        raise ModelRejected(
            f"{market}: no stored candles to check the model on: backfill it first "
            f"(python -m pipeline backfill --market {market} ...)"
        )
    tf = market.timeframe_ms
    candles, _ = fill_gaps(load_candles(engine, market, end - rows * 2 * tf, end), tf)
    features = compute_features(candles, spec)
    try:
        return parity_observations(features, action_map, minimum=OBSERVATIONS)
    except ModelRejected as error:
        raise ModelRejected(
            f"{market}: too few stored candles to check the model on {OBSERVATIONS} real "
            f"observations ({error}): backfill more history"
        ) from error
