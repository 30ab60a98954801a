"""The greedy policy of a trained agent as an ONNX file, checked against TensorFlow.

`export_onnx` freezes the Keras policy network (normalization included, so serving
passes raw features), converts it with tf2onnx at a pinned opset, names the input
`obs` ([batch, obs_dim] float32) and the output `q_values` (DQN) or `logits`
(actor-critic), and writes the lineage into the model's metadata_props: the
FeatureSpec, the action map, the algorithm, the training run, the data windows,
the code version and the creation time. `check_parity` runs the file in ONNX
Runtime beside the TensorFlow model on real observations and refuses it, naming
the worst row, unless every output agrees within 1e-5 and every greedy action is
the same (a row whose two best scores tie within 1e-5 may round either way).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ModelRejected
from pipeline.learn.evaluate import POSITION_RULES
from pipeline.learn.features import FeatureSpec

OPSET = 17
INPUT_NAME = "obs"
OUTPUT_NAMES = {"dqn": "q_values", "a2c": "logits"}
PARITY_TOLERANCE = 1e-5
PARITY_MIN_ROWS = 1000
METADATA_KEYS = (
    "feature_spec",
    "action_map",
    "algorithm",
    "training_run",
    "data_window",
    "code_version",
    "created_at",
)


@dataclass(frozen=True)
class Lineage:
    """What the ONNX file says about where it came from (its metadata_props)."""

    algorithm: str
    feature_spec: FeatureSpec
    action_map: tuple[float, ...]
    training_run: str
    data_window: Mapping[str, Any]
    code_version: str
    created_at: str = ""
    sizing: Mapping[str, Any] | None = None
    """The position sizing the policy was trained with (`evaluate.VolatilityTarget`)."""
    position_rule: str = "argmax"
    """How its scores become a position (`evaluate.greedy_positions`); older models: argmax."""

    def props(self) -> dict[str, str]:
        """The metadata_props entries, every value a string (JSON where structured)."""
        return {
            "feature_spec": self.feature_spec.to_json(),
            "action_map": json.dumps(list(self.action_map)),
            "algorithm": self.algorithm,
            "training_run": self.training_run,
            "data_window": json.dumps(dict(self.data_window), sort_keys=True),
            "code_version": self.code_version,
            "created_at": self.created_at or datetime.now(UTC).isoformat(timespec="seconds"),
            "sizing": json.dumps(dict(self.sizing) if self.sizing else None, sort_keys=True),
            "position_rule": self.position_rule,
        }

    @classmethod
    def from_props(cls, props: Mapping[str, str], where: str = "ONNX model") -> Lineage:
        """Read the lineage back; a missing or malformed entry is refused by name."""
        missing = [key for key in METADATA_KEYS if key not in props]
        if missing:
            raise ModelRejected(
                f"{where} lacks metadata {missing}: export it with python -m pipeline train "
                "(pipeline.learn.export), which writes the lineage"
            )
        try:
            lineage = cls(
                algorithm=props["algorithm"],
                feature_spec=FeatureSpec.from_json(props["feature_spec"]),
                action_map=tuple(float(x) for x in json.loads(props["action_map"])),
                training_run=props["training_run"],
                data_window=json.loads(props["data_window"]),
                code_version=props["code_version"],
                created_at=props["created_at"],
                sizing=json.loads(props.get("sizing", "null")),
                position_rule=props.get("position_rule", "argmax"),
            )
        except (ValueError, TypeError, KeyError) as error:
            raise ModelRejected(f"{where} has malformed metadata: {error}") from error
        if lineage.position_rule not in POSITION_RULES:
            raise ModelRejected(
                f"{where} takes positions by rule {lineage.position_rule!r}, which this code "
                f"does not know ({', '.join(POSITION_RULES)}): upgrade the trader or retrain"
            )
        every = lineage.data_window.get("decision_every", 1)
        if not isinstance(every, int) or every < 1:
            raise ModelRejected(
                f"{where} decides every {every!r} candles, which no trader or backtest can "
                "follow (a whole number >= 1 is needed): retrain it with --decision-every 1 "
                "or more"
            )
        return lineage


def export_onnx(model: Any, lineage: Lineage, path: Path | str) -> Path:
    """Convert the policy network `model` (obs -> scores) to ONNX at `path`, atomically."""
    import onnx
    import tensorflow as tf
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    output_name = OUTPUT_NAMES.get(lineage.algorithm)
    if output_name is None:
        raise ModelRejected(f"algorithm {lineage.algorithm!r} has no ONNX output name")
    obs_dim = lineage.feature_spec.dim + 1
    if tuple(model.inputs[0].shape[1:]) != (obs_dim,):
        raise ModelRejected(
            f"the model takes {tuple(model.inputs[0].shape[1:])} but the feature spec "
            f"gives observations of ({obs_dim},): export the model with its own spec"
        )
    signature = (tf.TensorSpec([None, obs_dim], tf.float32, name=INPUT_NAME),)

    @tf.function(input_signature=signature)
    def scores(obs: tf.Tensor) -> tf.Tensor:
        return tf.cast(model(obs), tf.float32)

    frozen = convert_variables_to_constants_v2(scores.get_concrete_function())
    proto, _ = tf2onnx.convert.from_graph_def(
        frozen.graph.as_graph_def(),
        input_names=[frozen.inputs[0].name],
        output_names=[frozen.outputs[0].name],
        opset=OPSET,
    )
    rename_value(proto, frozen.inputs[0].name, INPUT_NAME)
    rename_value(proto, frozen.outputs[0].name, output_name)
    onnx.helper.set_metadata_props(proto, lineage.props())
    proto.producer_name = "cryptobots"
    onnx.checker.check_model(proto, full_check=True)
    return write_atomically(proto.SerializeToString(), Path(path))


def parity_observations(
    features: np.ndarray, action_map: Sequence[float], minimum: int = PARITY_MIN_ROWS
) -> np.ndarray:
    """Real observations: finite feature rows, each with every position of the action map."""
    rows = features[np.isfinite(features).all(axis=1)]
    if len(rows) * len(action_map) < minimum:
        raise ModelRejected(
            f"parity needs at least {minimum} observations but the window gives "
            f"{len(rows)} feature rows x {len(action_map)} positions: widen the window"
        )
    positions = np.repeat(np.asarray(action_map, np.float32), len(rows))
    tiled = np.tile(rows, (len(action_map), 1))
    return np.column_stack([tiled, positions]).astype(np.float32)


@dataclass(frozen=True)
class Parity:
    """How ONNX Runtime and TensorFlow compared."""

    rows: int
    max_abs_diff: float
    worst_row: int
    actions_differ: int


def check_parity(
    model: Any, onnx_path: Path | str, observations: np.ndarray, tolerance: float = PARITY_TOLERANCE
) -> Parity:
    """Both runtimes on the same observations; ModelRejected names the worst row."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    observations = np.asarray(observations, np.float32)
    ours = session.run(None, {session.get_inputs()[0].name: observations})[0]
    theirs = np.asarray(model(observations), np.float32)
    diff = np.abs(ours.astype(np.float64) - theirs.astype(np.float64)).max(axis=1)
    worst = int(diff.argmax())
    differ = greedy_disagreements(ours, theirs, tolerance)
    parity = Parity(len(observations), float(diff[worst]), worst, len(differ))
    if parity.max_abs_diff > tolerance or len(differ):
        row = int(differ[0]) if len(differ) and diff[worst] <= tolerance else worst
        raise ModelRejected(
            f"ONNX export of {Path(onnx_path).name} fails parity on {parity.rows} observations: "
            f"max |onnx - tensorflow| = {parity.max_abs_diff:.3g} (tolerance {tolerance:g}), "
            f"{len(differ)} greedy actions differ; worst row {row}: "
            f"obs {observations[row].tolist()}, onnx {ours[row].tolist()}, "
            f"tensorflow {theirs[row].tolist()}"
        )
    return parity


def greedy_disagreements(ours: np.ndarray, theirs: np.ndarray, tolerance: float) -> np.ndarray:
    """Rows whose greedy actions differ, leaving out rows where TensorFlow's best two
    scores tie within `tolerance`: there float rounding alone may pick either action."""
    reference = np.sort(np.asarray(theirs, np.float64), axis=1)
    margin = reference[:, -1] - reference[:, -2] if reference.shape[1] > 1 else np.inf
    return np.flatnonzero((ours.argmax(axis=1) != theirs.argmax(axis=1)) & (margin > tolerance))


def read_lineage(onnx_path: Path | str) -> Lineage:
    """The lineage in an ONNX file's metadata_props."""
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    return Lineage.from_props({p.key: p.value for p in proto.metadata_props}, str(onnx_path))


def rename_value(proto: Any, old: str, new: str) -> None:
    """Rename a graph input or output and every use of it."""
    for value in (*proto.graph.input, *proto.graph.output):
        if value.name == old:
            value.name = new
    for node in proto.graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]


def write_atomically(payload: bytes, path: Path) -> Path:
    """Write `payload` to `path` whole or not at all (a temporary file renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
