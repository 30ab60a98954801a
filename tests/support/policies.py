"""Small real policies exported like training exports them, for the registry and the trader."""

from __future__ import annotations

from pathlib import Path

from pipeline.learn.export import Lineage, export_onnx
from pipeline.learn.features import FeatureSpec
from pipeline.learn.rl.networks import q_network
from pipeline.models.registry import model_name

MARKET = "binance:BTC/USDT:1h"
NAME = model_name(MARKET)
SPEC = FeatureSpec(
    features=("ret_1", "ret_4", "ret_24", "rsi_14"), mean=(0.0,) * 4, std=(0.01, 0.02, 0.05, 20.0)
)


def exported_policy(
    folder: Path,
    seed: int,
    spec: FeatureSpec = SPEC,
    metrics: dict | None = None,
    action_map: tuple[float, ...] = (0.0, 1.0),
) -> Path:
    """A small real DQN policy (long/flat, or `action_map`'s positions) on `spec`,
    exported to `folder/policy-SEED.onnx`."""
    model = q_network(spec.dim + 1, len(action_map), spec.mean, spec.std, seed=seed)
    extra = {"valid": [1, 2], "decision_every": 1} if metrics is None else metrics
    lineage = Lineage("dqn", spec, action_map, f"run-{seed}", extra, "test")
    return export_onnx(model, lineage, folder / f"policy-{seed}.onnx")
