"""A policy trained elsewhere, adopted under the model contract: a matching ONNX file is
rewritten with the contract's names and an external lineage; a file that is not ONNX,
or that does not match the declared features or action map, is refused by name with
nothing written; a model giving non-finite scores is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.errors import ConfigurationError, ModelRejected
from pipeline.learn.export import INPUT_NAME, read_lineage
from pipeline.models.external import adopt, check_finite, declared_sizing
from pipeline.models.registry.artifacts import sha256_of, verify_artifact

FEATURES = ("ret_1", "ret_4", "ret_24", "rsi_14")


def foreign_model(folder: Path, width: int = 5, scores: int = 2, op: str = "MatMul") -> Path:
    """An ONNX file as another library exports one: its own names, a fixed batch of 1."""
    weights = np.arange(width * scores, dtype=np.float32).reshape(width, scores) / 10
    nodes = [helper.make_node("MatMul", ["input", "w"], ["scores"])]
    if op == "Log":  # log of raw inputs: NaN on negative returns
        nodes = [
            helper.make_node("MatMul", ["input", "w"], ["linear"]),
            helper.make_node("Log", ["linear"], ["scores"]),
        ]
    graph = helper.make_graph(
        nodes,
        "policy",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, scores])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "foreign.onnx"
    onnx.save(model, path)
    return path


def adopt_into(source: Path, target: Path, **overrides) -> None:
    declared = {"market": "binance:BTC/USDT:1h", "features": FEATURES, "action_map": (0.0, 1.0)}
    declared |= overrides
    adopt(source, target, origin=str(source), registered_by="desk", **declared)


def test_a_matching_model_is_rewritten_to_the_contract_with_an_external_lineage(
    tmp_path: Path,
) -> None:
    source = foreign_model(tmp_path)
    target = tmp_path / "adopted.onnx"
    adopt_into(source, target, action_map=(-1.0, 1.0))
    lineage = read_lineage(target)
    assert lineage.algorithm == "external"
    assert lineage.feature_spec.features == FEATURES
    assert lineage.action_map == (-1.0, 1.0)
    assert lineage.data_window["sha256"] == sha256_of(source)
    assert lineage.data_window["registered_by"] == "desk"
    assert verify_artifact(target, "adopted").lineage == lineage
    import onnxruntime as ort

    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    batch = np.ones((3, 5), np.float32)
    assert session.get_inputs()[0].name == INPUT_NAME
    assert session.run(None, {INPUT_NAME: batch})[0].shape == (3, 2), "any batch size"


def test_a_file_that_is_not_onnx_is_refused_naming_it_and_the_fix(tmp_path: Path) -> None:
    source = tmp_path / "policy.onnx"
    source.write_text("a pickled torch model, not ONNX")
    target = tmp_path / "adopted.onnx"
    with pytest.raises(ModelRejected, match="not a valid ONNX model") as refused:
        adopt_into(source, target)
    assert str(source) in str(refused.value)
    assert "torch.onnx.export" in str(refused.value)
    assert not target.exists()


@pytest.mark.parametrize(
    ("declared", "check"),
    [
        ({"features": FEATURES[:3]}, "takes 5 values, but the 3 declared features"),
        ({"features": ("ret_1", "ret_4", "ret_24", "moon_phase")}, "unknown feature"),
        ({"action_map": (-1.0, 0.0, 1.0)}, "gives 2 scores, but the action map"),
        ({"position_rule": "vibes"}, "--position-rule"),
    ],
    ids=["input width", "unknown feature", "action map", "position rule"],
)
def test_a_model_that_does_not_match_its_declaration_is_refused_and_nothing_written(
    tmp_path: Path, declared: dict, check: str
) -> None:
    source = foreign_model(tmp_path)
    target = tmp_path / "adopted.onnx"
    with pytest.raises(ModelRejected, match=check) as refused:
        adopt_into(source, target, **declared)
    assert str(source) in str(refused.value)
    assert not target.exists()


def test_a_model_with_non_finite_scores_on_real_observations_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "adopted.onnx"
    adopt_into(foreign_model(tmp_path, op="Log"), target)
    observations = np.column_stack([np.linspace(-1, 1, 40).reshape(10, 4), np.zeros(10)])
    with pytest.raises(ModelRejected, match="non-finite scores") as refused:
        check_finite(target, observations, "external model policy.onnx")
    assert "policy.onnx" in str(refused.value)
    check_finite(target, np.abs(observations) + 0.1, "the same model on positive inputs")


def test_the_momentum_rule_goes_long_exactly_when_its_return_is_positive(tmp_path: Path) -> None:
    import onnxruntime as ort

    from pipeline.models.rules import momentum_rule

    source, features = momentum_rule(tmp_path / "momentum.onnx", reads=("vol_168",))
    assert features == ("ret_168", "vol_168")
    target = tmp_path / "adopted.onnx"
    adopt_into(source, target, features=features)
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    returns = np.array([-0.05, -1e-6, 0.0, 1e-6, 0.08], np.float32)
    volatility = np.array([0.5, 0.0, 9.0, 0.01, 0.02], np.float32)
    obs = np.column_stack([returns, volatility, np.ones_like(returns)]).astype(np.float32)
    greedy = session.run(None, {INPUT_NAME: obs})[0].argmax(axis=1)
    assert greedy.tolist() == [0, 0, 0, 1, 1], "flat unless the 168 h return is above 0"


def test_a_sizing_reading_a_volatility_the_model_is_not_given_is_refused(tmp_path: Path) -> None:
    sizing = declared_sizing("target", 0.2, ("vol_168",))
    with pytest.raises(ModelRejected, match=r"sizing reads the volatilities \['vol_168'\]") as no:
        adopt_into(foreign_model(tmp_path), tmp_path / "adopted.onnx", sizing=sizing)
    assert "--features" in str(no.value)
    assert not (tmp_path / "adopted.onnx").exists()


def test_an_unknown_or_unset_sizing_is_a_configuration_error_naming_the_flag() -> None:
    with pytest.raises(ConfigurationError, match="--sizing takes none or target"):
        declared_sizing("kelly", 0.2, ("vol_168",))
    with pytest.raises(ConfigurationError, match=r"training\.target_volatility, which is null"):
        declared_sizing("target", None, ("vol_168",))
    assert declared_sizing("none", 0.2, ("vol_168",)) is None
    assert declared_sizing("target", 0.2, ("vol_168",))["features"] == ["vol_168"]
