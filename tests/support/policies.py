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


def foreign_model(path: Path, op: str = "MatMul") -> Path:
    """A 5-input, 2-score ONNX policy with another library's names (what `models register`
    brings in, declared with 4 features); `Log` makes it NaN on negative returns."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.full((5, 2), 0.5, np.float32), "w")
    nodes = [helper.make_node("MatMul", ["state", "w"], ["out" if op == "MatMul" else "lin"])]
    if op == "Log":
        nodes.append(helper.make_node("Log", ["lin"], ["out"]))
    graph = helper.make_graph(
        nodes, "foreign",
        [helper.make_tensor_value_info("state", TensorProto.FLOAT, ["n", 5])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 2])],
        [weights],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path
