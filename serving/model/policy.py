"""The champion policy in ONNX Runtime, and the watch that swaps it.

A model is loaded only through `pipeline.models.registry.load_verified` (checksum, ONNX
checker, signature against the feature spec), then warmed up with one inference
before it can serve. The watcher polls the `champion` alias; a new version is
loaded and verified off to the side and swapped in between two decisions (the
trader takes `current()` once per decision), so no decision sees half a model. A
refused artifact is logged and counted and the running model keeps trading.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

from pipeline.errors import ModelRejected
from pipeline.learn.evaluate import VolatilityTarget, expected_positions
from pipeline.learn.features import FeatureSpec
from pipeline.models.registry import ALIAS_CHANNEL, CHAMPION, alias, load_verified
from pipeline.settings import Market

log = logging.getLogger("serving.model")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def choose_providers(available: Sequence[str]) -> list[str]:
    """CUDA first when ONNX Runtime offers it, CPU always as the fallback."""
    return [CUDA, CPU] if CUDA in available else [CPU]


def usable_providers() -> list[str]:
    """The providers a real session ends up with, probed quietly on a one-node graph: a
    GPU build of ONNX Runtime on a machine without a GPU or CUDA libraries offers CUDA
    but falls back to the CPU, and logs an ERROR about it at every session otherwise."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = 4
    ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(
            model.SerializeToString(),
            options,
            providers=choose_providers(ort.get_available_providers()),
        )
    finally:
        ort.set_default_logger_severity(2)
    return list(session.get_providers())


@dataclass(frozen=True)
class Policy:
    """One verified, warmed-up model version: what a decision needs from it."""

    name: str
    version: int
    sha256: str
    spec: FeatureSpec
    action_map: tuple[float, ...]
    decision_every: int
    algorithm: str
    provider: str
    session: Any = field(repr=False)
    input_name: str = field(repr=False)
    sizing: VolatilityTarget | None = None
    timeframe_ms: int = 3_600_000
    position_rule: str = "argmax"

    def scale(self, features: np.ndarray) -> float:
        """Size of this decision's position (the model's volatility target; 1 without)."""
        if self.sizing is None:
            return 1.0
        row = np.asarray(features, dtype=np.float64)[None, :]
        return float(self.sizing.scale(row, self.spec.features, self.timeframe_ms)[0])

    def scores(self, obs: np.ndarray) -> np.ndarray:
        """[batch, actions] q-values or logits for float32 observations [batch, dim+1]."""
        return self.session.run(None, {self.input_name: obs})[0]

    def position(self, scores: np.ndarray) -> float:
        """The unsized position these scores hold, by the model's rule (as its backtests
        took it, `evaluate.greedy_positions`)."""
        if self.position_rule == "expected":
            return float(expected_positions(scores[None, :], self.action_map)[0])
        return self.action_map[int(np.argmax(scores))]

    def decide(self, features: np.ndarray, position: float) -> tuple[int, np.ndarray, str]:
        """(greedy action, scores, sha256 of the observation) for one market."""
        obs = np.append(features, np.float32(position)).astype(np.float32)[None, :]
        scores = self.scores(obs)[0]
        return int(np.argmax(scores)), scores, hashlib.sha256(obs.tobytes()).hexdigest()


def load_policy(
    engine: Engine, name: str, version: int, cache_dir: Path, providers: Sequence[str]
) -> Policy:
    """Fetch, verify and warm up a registered version; ModelRejected names what failed."""
    import onnxruntime as ort

    verified = load_verified(engine, name, version, cache_dir / name / str(version))
    lineage = verified.lineage
    label = f"{name} v{version}"
    try:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # batch-1 decisions: threads only add hand-offs
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(
            str(verified.path), sess_options=options, providers=list(providers)
        )
        input_name = session.get_inputs()[0].name
        warm = np.zeros((1, lineage.feature_spec.dim + 1), np.float32)
        out = session.run(None, {input_name: warm})[0]
    except Exception as error:  # onnxruntime raises its own exception types per failure
        raise ModelRejected(f"{label}: ONNX Runtime cannot run it: {error}") from error
    if out.shape != (1, len(lineage.action_map)) or not np.all(np.isfinite(out)):
        raise ModelRejected(
            f"{label}: warm-up gave {out.shape} scores {out.tolist()}, expected "
            f"{len(lineage.action_map)} finite ones"
        )
    if lineage.feature_spec.mean is None:
        raise ModelRejected(f"{label}: the feature spec has no normalization")
    context = [f for f in lineage.feature_spec.features if f.startswith("ctx:")]
    if context:
        raise ModelRejected(f"{label}: context features {context} are not served yet")
    sizing = VolatilityTarget.from_dict(lineage.sizing)
    timeframe_ms = 3_600_000
    if sizing is not None:
        market = lineage.data_window.get("market")
        if not market:
            raise ModelRejected(
                f"{label}: sized by volatility but its lineage names no market (timeframe): "
                "export it with python -m pipeline train"
            )
        timeframe_ms = Market.model_validate(market).timeframe_ms
    return Policy(
        name=name,
        version=version,
        sha256=verified.sha256,
        spec=lineage.feature_spec,
        action_map=tuple(lineage.action_map),
        decision_every=int(lineage.data_window.get("decision_every", 1)),
        algorithm=lineage.algorithm,
        provider=session.get_providers()[0],
        session=session,
        input_name=input_name,
        sizing=sizing,
        timeframe_ms=timeframe_ms,
        position_rule=lineage.position_rule,
    )


class ModelWatch:
    """The champion of one model name, re-checked on `poll()`; swaps are atomic."""

    def __init__(
        self,
        engine: Engine,
        name: str,
        cache_dir: Path,
        providers: Sequence[str],
        on_event: Callable[[str, dict[str, Any]], None] = lambda kind, info: None,
    ) -> None:
        self.engine, self.name, self.cache_dir = engine, name, cache_dir
        self.providers = list(providers)
        self.on_event = on_event
        self._policy: Policy | None = None
        self._lock = threading.Lock()
        self._refused: dict[int, str] = {}

    def current(self) -> Policy | None:
        """The model serving now (None until a champion has loaded)."""
        with self._lock:
            return self._policy

    def poll(self) -> Policy | None:
        """Load the champion when it changed; a bad artifact is refused and the old model
        stays. Returns the model serving after the poll."""
        champion = alias(self.engine, self.name, CHAMPION)
        running = self.current()
        if champion is None:
            return running
        version = int(champion["version"])
        if running is not None and running.version == version:
            return running
        if version in self._refused:
            return running
        try:
            policy = load_policy(self.engine, self.name, version, self.cache_dir, self.providers)
        except ModelRejected as error:
            self._refused[version] = str(error)
            log.error("model refused, keeping %s: %s", _label(running), error)
            self.on_event("refused", {"name": self.name, "version": version, "error": str(error)})
            return running
        if CUDA in self.providers and policy.provider != CUDA:
            log.warning(
                "%s v%d: the CUDA provider did not load (no GPU or CUDA libraries): on %s; "
                "later models go straight to the CPU",
                self.name,
                version,
                policy.provider,
            )
            self.providers = [CPU]
        with self._lock:
            self._policy = policy
        log.info(
            "model swapped: %s -> %s v%d (%s, %s)",
            _label(running),
            self.name,
            version,
            policy.algorithm,
            policy.provider,
        )
        self.on_event(
            "loaded",
            {
                "name": self.name,
                "version": version,
                "from": None if running is None else running.version,
                "provider": policy.provider,
            },
        )
        return policy

    @property
    def refused(self) -> dict[int, str]:
        """Versions refused so far, with why."""
        return dict(self._refused)


def _label(policy: Policy | None) -> str:
    return "no model" if policy is None else f"{policy.name} v{policy.version}"


class AliasNotifications:
    """Wakes the model watch as soon as an alias moves (Postgres LISTEN/NOTIFY); polling
    stays the rule, this only makes a promotion reach the trader sooner. On SQLite, or
    while the database is away, `moved()` is simply empty."""

    def __init__(self, engine: Engine, retry_seconds: float = 30.0) -> None:
        self.engine = engine
        self.retry_seconds = retry_seconds
        self._conn: Any = None
        self._failed_at = float("-inf")

    def moved(self) -> set[str]:
        """Names whose alias moved since the last call (non-blocking)."""
        if self.engine.dialect.name != "postgresql":
            return set()
        try:
            if self._conn is None:
                if time.monotonic() - self._failed_at < self.retry_seconds:
                    return set()
                self._listen()
            self._conn.poll()
            names = {n.payload for n in self._conn.notifies}
            self._conn.notifies.clear()
            return names
        except Exception as error:  # whatever broke, a lost listener only delays a swap
            log.info("model notifications paused (polling goes on): %s", error)
            self.close()
            self._failed_at = time.monotonic()
            return set()

    def _listen(self) -> None:
        # a connection of its own, outside the pool: it listens for the process's life
        args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
        conn = self.engine.dialect.loaded_dbapi.connect(*args, **kwargs)
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(f"LISTEN {ALIAS_CHANNEL}")
        self._conn = conn

    def close(self) -> None:
        """Stop listening."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
