"""ONNX export: the file runs in ONNX Runtime like the TensorFlow policy and carries its lineage."""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from pipeline.errors import ModelRejected
from pipeline.learn.export import (
    Lineage,
    check_parity,
    export_onnx,
    parity_observations,
    read_lineage,
)
from pipeline.learn.features import (
    Candles,
    FeatureSpec,
    compute_features,
    fill_gaps,
    fit_normalization,
)
from pipeline.learn.rl.networks import actor_critic_network, policy_of, q_network

LONG_FLAT = (0.0, 1.0)


@pytest.fixture(scope="module")
def real(data_dir: Path) -> tuple[FeatureSpec, np.ndarray]:
    """Features of 3,000 recorded BTC/USDT hours, normalization fitted on them."""
    with gzip.open(data_dir / "binance_BTC-USDT_1h.csv.gz", "rt") as handle:
        rows = [line.strip().split(",") for line in handle.readlines()[2:3001]]
    candles, _ = fill_gaps(Candles.from_rows([[float(x) for x in row] for row in rows]), 3_600_000)
    spec = FeatureSpec()
    matrix = compute_features(candles, spec)
    return fit_normalization(spec, matrix[spec.window :]), matrix[spec.window :]


def policy(algorithm: str, spec: FeatureSpec):
    dim = spec.dim + 1
    if algorithm == "dqn":
        return q_network(dim, 2, spec.mean, spec.std, dueling=True, seed=3)
    return policy_of(actor_critic_network(dim, 2, spec.mean, spec.std, seed=3))


def lineage(algorithm: str, spec: FeatureSpec) -> Lineage:
    return Lineage(
        algorithm=algorithm,
        feature_spec=spec,
        action_map=LONG_FLAT,
        training_run=f"{algorithm}-run-1",
        data_window={"train": [1, 2], "valid": [2, 3]},
        code_version="abc123",
    )


@pytest.mark.parametrize(("algorithm", "output"), [("dqn", "q_values"), ("a2c", "logits")])
def test_export_matches_tensorflow_on_real_observations(
    tmp_path: Path, real: tuple[FeatureSpec, np.ndarray], algorithm: str, output: str
) -> None:
    spec, features = real
    model = policy(algorithm, spec)
    path = export_onnx(model, lineage(algorithm, spec), tmp_path / "policy.onnx")
    observations = parity_observations(features, LONG_FLAT)
    parity = check_parity(model, path, observations)
    assert parity.rows >= 1000
    assert parity.max_abs_diff <= 1e-5
    assert parity.actions_differ == 0
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["obs"]
    assert [o.name for o in graph.output] == [output]


def test_metadata_carries_the_lineage(tmp_path: Path, real: tuple[FeatureSpec, np.ndarray]) -> None:
    spec, _ = real
    written = lineage("dqn", spec)
    path = export_onnx(policy("dqn", spec), written, tmp_path / "policy.onnx")
    read = read_lineage(path)
    assert read.feature_spec == spec
    assert read.action_map == LONG_FLAT
    assert (read.algorithm, read.training_run, read.code_version) == ("dqn", "dqn-run-1", "abc123")
    assert read.data_window == {"train": [1, 2], "valid": [2, 3]}
    assert read.created_at


def test_a_perturbed_graph_fails_parity_naming_the_worst_row(
    tmp_path: Path, real: tuple[FeatureSpec, np.ndarray]
) -> None:
    spec, features = real
    model = policy("dqn", spec)
    path = export_onnx(model, lineage("dqn", spec), tmp_path / "policy.onnx")
    proto = onnx.load(str(path))
    weights = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
    perturbed = numpy_helper.to_array(weights) + np.float32(1e-3)
    weights.CopyFrom(numpy_helper.from_array(perturbed, weights.name))
    onnx.save(proto, str(path))
    with pytest.raises(ModelRejected, match=r"fails parity .* worst row \d+: obs \["):
        check_parity(model, path, parity_observations(features, LONG_FLAT))


def test_missing_metadata_is_refused_naming_what_is_missing(
    tmp_path: Path, real: tuple[FeatureSpec, np.ndarray]
) -> None:
    spec, _ = real
    path = export_onnx(policy("dqn", spec), lineage("dqn", spec), tmp_path / "policy.onnx")
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.save(proto, str(path))
    with pytest.raises(ModelRejected, match=r"lacks metadata .*feature_spec"):
        read_lineage(path)


def test_a_model_whose_input_width_disagrees_with_the_spec_is_refused(
    tmp_path: Path, real: tuple[FeatureSpec, np.ndarray]
) -> None:
    spec, _ = real
    other = FeatureSpec(features=("ret_1", "ret_4"))
    with pytest.raises(ModelRejected, match="feature spec gives observations of"):
        export_onnx(policy("dqn", spec), lineage("dqn", other), tmp_path / "policy.onnx")
    assert not (tmp_path / "policy.onnx").exists()


def test_parity_needs_a_thousand_real_observations(real: tuple[FeatureSpec, np.ndarray]) -> None:
    _, features = real
    with pytest.raises(ModelRejected, match="at least 1000 observations"):
        parity_observations(features[:100], LONG_FLAT)


def test_greedy_actions_that_differ_only_on_a_float_tie_are_not_a_parity_failure() -> None:
    from pipeline.learn.export import greedy_disagreements

    theirs = np.array([[0.10038567, 0.10038567], [0.2, 0.9], [0.5, 0.1]], np.float32)
    ours = np.array([[0.10038563, 0.10038567], [0.9, 0.2], [0.5, 0.1]], np.float32)
    assert greedy_disagreements(ours, theirs, 1e-5).tolist() == [1]


def test_the_position_rule_travels_in_the_metadata(real: tuple[FeatureSpec, np.ndarray]) -> None:
    spec, _ = real
    written = dataclasses.replace(lineage("a2c", spec), position_rule="expected")
    assert Lineage.from_props(written.props()).position_rule == "expected"


def test_a_model_exported_before_position_rules_takes_the_argmax(
    real: tuple[FeatureSpec, np.ndarray],
) -> None:
    spec, _ = real
    props = lineage("a2c", spec).props()
    del props["position_rule"]
    assert Lineage.from_props(props).position_rule == "argmax"


def test_an_unknown_position_rule_is_refused_naming_the_known_ones(
    real: tuple[FeatureSpec, np.ndarray],
) -> None:
    spec, _ = real
    props = {**lineage("a2c", spec).props(), "position_rule": "kelly"}
    with pytest.raises(ModelRejected, match=r"rule 'kelly'.*argmax, expected"):
        Lineage.from_props(props)


@pytest.mark.parametrize("every", [0, -24, "daily"])
def test_a_model_that_decides_every_zero_candles_is_refused(
    real: tuple[FeatureSpec, np.ndarray], every: object
) -> None:
    spec, _ = real
    written = lineage("a2c", spec)
    broken = dataclasses.replace(
        written, data_window={**written.data_window, "decision_every": every}
    )
    with pytest.raises(ModelRejected, match=r"decides every .* retrain it with --decision-every"):
        Lineage.from_props(broken.props())
