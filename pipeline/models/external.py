"""A policy trained outside the pipeline (another library, a notebook, a rule written as an
ONNX graph) brought under the model contract, so that the registry, the gates and the
trader treat it like one of ours.

`adopt` checks the foreign file against what its owner declares (the features it reads,
in order, and what each of its outputs means as a position), then writes a copy that
meets the contract (DESIGN.md, Model contract): input `obs` [batch, features + 1],
output `logits`, the lineage in its metadata marked external (who registered it, from
where, its sha256). Normalization is the model's own: it is declared to be inside the
graph, and the features are passed raw. `check_finite` runs the adopted file on real
observations. Every refusal names the file, the check and the fix; nothing is written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ConfigurationError, ModelRejected
from pipeline.learn.evaluate.positions import POSITION_RULES
from pipeline.learn.export import INPUT_NAME, Lineage, rename_value, write_atomically
from pipeline.learn.features.spec import FeatureSpec, FeatureSpecError
from pipeline.models.registry.artifacts import sha256_of, verify_artifact

ALGORITHM = "external"
OUTPUT_NAME = "logits"  # scores per action, read by the position rule
SIZINGS = ("none", "target")


def feature_names(text: str) -> tuple[str, ...]:
    """`--features` / the `features` param: comma-separated names, in the input's order."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise ConfigurationError(
            f"features {text!r}: give the features the model reads, comma-separated, in its "
            "input's order (e.g. ret_1,ret_24,rsi_14)"
        )
    return names


def action_positions(text: str) -> tuple[float, ...]:
    """`--action-map` / the `action_map` param: the position of each output, comma-separated."""
    try:
        positions = tuple(float(value) for value in text.split(","))
    except ValueError:
        positions = ()
    if not positions or not all(math.isfinite(p) for p in positions):
        raise ConfigurationError(
            f"action map {text!r}: give the position each output stands for as "
            "comma-separated numbers (e.g. 0,1 or -1,0,1)"
        )
    return positions


def declared_sizing(
    name: str, target_volatility: float | None, volatility_features: Sequence[str]
) -> dict[str, Any] | None:
    """The sizing a registered model trades with, from `--sizing`: `none` (the positions
    of its action map) or `target` (the training settings' volatility target, as the
    learned policies are sized)."""
    from pipeline.learn.evaluate import VolatilityTarget

    if name == "none":
        return None
    if name != "target":
        raise ConfigurationError(
            f"sizing {name!r} is unknown: --sizing takes {' or '.join(SIZINGS)}"
        )
    if target_volatility is None:
        raise ConfigurationError(
            "--sizing target sizes positions by training.target_volatility, which is null: "
            "set it (e.g. CRYPTOBOTS_TRAINING__TARGET_VOLATILITY=0.2) or register with "
            "--sizing none"
        )
    return VolatilityTarget(target_volatility, tuple(volatility_features)).to_dict()


def adopt(
    source: Path,
    target: Path,
    *,
    market: str,
    features: Sequence[str],
    action_map: Sequence[float],
    origin: str,
    registered_by: str,
    sizing: Mapping[str, Any] | None = None,
    position_rule: str = "argmax",
    reason: str | None = None,
) -> Lineage:
    """Write `target`: the ONNX file at `source` under the model contract, with its lineage
    (`market`: what it trades, as a market string);
    ModelRejected (nothing written) when it is not ONNX or does not match what is declared."""
    import onnx

    label = f"external model {source}"
    proto = _load(source, label)
    spec = _declared_spec(features, label)
    if position_rule not in POSITION_RULES:
        raise ModelRejected(
            f"{label}: position rule {position_rule!r} is unknown; --position-rule takes "
            f"{' or '.join(POSITION_RULES)}"
        )
    unread = [f for f in (sizing or {}).get("features", ()) if f not in spec.features]
    if unread:
        raise ModelRejected(
            f"{label}: its sizing reads the volatilities {unread}, which its declared "
            f"features {list(spec.features)} lack: add them to --features (and to the "
            "model's input, which may ignore them) or register with --sizing none"
        )
    if len(action_map) < 2:
        raise ModelRejected(
            f"{label}: the action map {list(action_map)} needs two positions or more "
            "(--action-map 0,1 for flat/long)"
        )
    graph = proto.graph
    inputs = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ModelRejected(
            f"{label}: it has {len(inputs)} inputs and {len(graph.output)} outputs; the trader "
            "passes one observation tensor and reads one score tensor: export the policy "
            "alone (no value head, no state inputs)"
        )
    width = _width(inputs[0])
    if width != spec.dim + 1:
        raise ModelRejected(
            f"{label}: its input {inputs[0].name!r} takes {width} values, but the {spec.dim} "
            f"declared features and the position make {spec.dim + 1}: declare with "
            "--features the features it was trained on, in its input's order"
        )
    scores = _width(graph.output[0])
    if scores != len(action_map):
        raise ModelRejected(
            f"{label}: it gives {scores} scores, but the action map {list(action_map)} has "
            f"{len(action_map)} positions: declare one position per output with --action-map"
        )
    rename_value(proto, inputs[0].name, INPUT_NAME)
    rename_value(proto, graph.output[0].name, OUTPUT_NAME)
    for value in (inputs[0], graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    digest = sha256_of(source)
    lineage = Lineage(
        algorithm=ALGORITHM,
        feature_spec=spec,
        action_map=tuple(float(a) for a in action_map),
        training_run=f"external:{digest[:16]}",
        data_window={
            "market": market,
            "decision_every": 1,
            "origin": origin,
            "registered_by": registered_by,
            "sha256": digest,
            **({"reason": reason} if reason else {}),
        },
        code_version="external",
        sizing=dict(sizing) if sizing else None,
        position_rule=position_rule,
    )
    del proto.metadata_props[:]
    for key, value in lineage.props().items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto, full_check=True)
    write_atomically(proto.SerializeToString(), target)
    verify_artifact(target, label)
    return lineage


def check_finite(path: Path, observations: np.ndarray, label: str) -> None:
    """ModelRejected unless the model's scores on every one of `observations` are finite."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores = session.run(None, {INPUT_NAME: np.asarray(observations, np.float32)})[0]
    bad = np.flatnonzero(~np.isfinite(scores).all(axis=1))
    if len(bad):
        row = int(bad[0])
        raise ModelRejected(
            f"{label}: {len(bad)} of {len(scores)} real observations give non-finite scores "
            f"(first: obs {np.asarray(observations)[row].tolist()} -> {scores[row].tolist()}): "
            "fix the model (a division or log of the raw features?) and register it again"
        )


def _load(source: Path, label: str) -> Any:
    import onnx

    if not source.is_file():
        raise ModelRejected(f"{label}: no such file: give the path of an exported .onnx file")
    try:
        proto = onnx.load(str(source))
        onnx.checker.check_model(proto, full_check=True)
    except Exception as error:  # onnx raises several unrelated types for bad bytes
        raise ModelRejected(
            f"{label}: not a valid ONNX model ({type(error).__name__}: {error}); export the "
            "policy to ONNX first (torch.onnx.export, tf2onnx, skl2onnx) and register that file"
        ) from error
    return proto


def _declared_spec(features: Sequence[str], label: str) -> FeatureSpec:
    """The declared features as a spec whose normalization is the identity: the model
    normalizes inside its graph and is passed the raw features."""
    try:
        return FeatureSpec(
            name=ALGORITHM,
            features=tuple(features),
            mean=(0.0,) * len(features),
            std=(1.0,) * len(features),
        )
    except FeatureSpecError as error:
        raise ModelRejected(f"{label}: --features: {error}") from error


def _width(value: Any) -> int | None:
    dims = value.type.tensor_type.shape.dim
    last = dims[-1] if len(dims) == 2 else None
    return int(last.dim_value) if last is not None and last.HasField("dim_value") else None
