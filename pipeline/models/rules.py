"""Trading rules written as ONNX graphs, to be registered like any external model
(`python -m pipeline models register`) and judged on the same evidence as the learned
policies: the question the walk-forward report keeps asking (does a plain trend rule do
as well?) answered by the gates instead of a table.

`momentum_rule`: long when the `hours`-candle log return (`ret_<hours>`) is above 0, else
flat. Its input is the contract's [ret_<hours>, position]; its two scores are (0, ret x
1e6), so the greedy action is long exactly when the return is positive.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.learn.export import write_atomically

SCALE = 1e6  # any positive return outscores flat's 0


def momentum_rule(path: Path | str, hours: int = 168) -> tuple[Path, str]:
    """Write the momentum rule's ONNX file; returns (path, the feature it reads)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    feature = f"ret_{hours}"
    weights = np.array([[0.0, SCALE], [0.0, 0.0]], np.float32)  # (ret, position) -> scores
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "weights"], ["scores"])],
        f"momentum_{hours}",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(weights, "weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return write_atomically(model.SerializeToString(), Path(path)), feature
