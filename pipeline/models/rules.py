"""Trading rules written as ONNX graphs, to be registered like any external model
(`python -m pipeline models register`) and judged on the same evidence as the learned
policies: the question the walk-forward report keeps asking (does a plain trend rule do
as well?) answered by the gates instead of a table.

`momentum_rule`: long when the `hours`-candle log return (`ret_<hours>`) is above 0, else
flat. Its input is the contract's [ret_<hours>, *reads, position]: `reads` are features
the rule ignores but the trader must pass, e.g. the volatilities that size it when it is
registered with `--sizing target`. Its two scores are (0, ret x 1e6), so the greedy
action is long exactly when the return is positive: the walk-forward report's
`momentum_<hours>h` baseline on hourly candles.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.learn.export import write_atomically

SCALE = 1e6  # any positive return outscores flat's 0


def momentum_rule(
    path: Path | str, hours: int = 168, reads: Sequence[str] = ()
) -> tuple[Path, tuple[str, ...]]:
    """Write the momentum rule's ONNX file; returns (path, the features it reads, in
    its input's order)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    features = (f"ret_{hours}", *reads)
    width = len(features) + 1
    weights = np.zeros((width, 2), np.float32)  # (ret, *reads, position) -> scores
    weights[0, 1] = SCALE
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "weights"], ["scores"])],
        f"momentum_{hours}",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(weights, "weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return write_atomically(model.SerializeToString(), Path(path)), features
