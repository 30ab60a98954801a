"""What one training run is asked to do: algorithm, market, windows, budget, environment.

`TrainRequest` refuses what cannot train (unknown algorithm, a budget below 1, a position
rule the algorithm's outputs do not fit, validation before the end of training) by the
flag or setting to change, before anything is read or trained.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import ConfigurationError
from pipeline.learn.evaluate import POSITION_RULES, VolatilityTarget
from pipeline.learn.features import FeatureSpec
from pipeline.learn.windows import Window
from pipeline.settings import Market, Settings

ALGORITHMS = ("dqn", "a2c")
DEFAULT_SPEC = FeatureSpec()


_FLAGS = {"num_envs": "envs"}
_SETTINGS = {"steps": "dqn_steps/a2c_steps", "num_envs": "dqn_envs/a2c_envs"}


@dataclass(frozen=True)
class TrainRequest:
    """One agent to train: algorithm, market, windows, budget and environment."""

    algorithm: str
    market: Market
    train: Window
    valid: Window
    steps: int
    num_envs: int
    episode_length: int = 60
    decision_every: int = 1
    features: tuple[str, ...] = DEFAULT_SPEC.features
    shorting: bool = False
    position_steps: int = 1
    position_rule: str = "argmax"
    fee_bps: float = 10.0
    slippage_bps: float = 5.0
    borrow_bps_per_hour: float = 0.1
    seed: int = 0
    ensemble: int = 1
    target_volatility: float | None = None
    volatility_features: tuple[str, ...] = ("vol_168",)
    downside_penalty: float = 0.0
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigurationError(
                f"algorithm {self.algorithm!r} is not known: use one of {', '.join(ALGORITHMS)}"
            )
        for name, low in (
            ("steps", 1),
            ("num_envs", 1),
            ("episode_length", 1),
            ("decision_every", 1),
            ("seed", 0),
        ):
            if getattr(self, name) < low:
                raise ConfigurationError(
                    f"{name} must be a whole number >= {low}, got {getattr(self, name)}: "
                    f"set it (flag --{_FLAGS.get(name, name).replace('_', '-')} or "
                    f"training.{_SETTINGS.get(name, name)}) to {low} or more"
                )
        if self.ensemble < 1:
            raise ConfigurationError(
                f"ensemble must be at least 1 member, got {self.ensemble}: set "
                "training.ensemble (CRYPTOBOTS_TRAINING__ENSEMBLE) to 1 or more"
            )
        if self.position_steps < 1:
            raise ConfigurationError(
                f"position_steps must be at least 1, got {self.position_steps}: set "
                "training.position_steps (CRYPTOBOTS_TRAINING__POSITION_STEPS) to 1 or more"
            )
        if self.position_rule not in POSITION_RULES:
            raise ConfigurationError(
                f"position_rule {self.position_rule!r} is not known: set "
                "training.position_rule (CRYPTOBOTS_TRAINING__POSITION_RULE) to one of "
                f"{', '.join(POSITION_RULES)}"
            )
        if self.position_rule == "expected" and self.algorithm != "a2c":
            raise ConfigurationError(
                f"position_rule expected weighs positions by action probabilities, which "
                f"{self.algorithm}'s Q-values are not: use it with a2c, or set "
                "training.position_rule (CRYPTOBOTS_TRAINING__POSITION_RULE) to argmax"
            )
        if self.valid.start < self.train.end:
            raise ConfigurationError(
                f"validation window {self.valid} overlaps the training window {self.train}: "
                "validate on a later, disjoint window"
            )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        algorithm: str,
        market: Market,
        train: Window,
        valid: Window,
        **changes: Any,
    ) -> TrainRequest:
        """A request with the budget and environment of `settings.training`, then `changes`."""
        t = settings.training
        defaults: dict[str, Any] = {
            "steps": t.dqn_steps if algorithm == "dqn" else t.a2c_steps,
            "num_envs": t.dqn_envs if algorithm == "dqn" else t.a2c_envs,
            "episode_length": t.episode_length,
            "decision_every": t.decision_every,
            "features": t.features,
            "shorting": t.shorting,
            "position_steps": t.position_steps,
            "position_rule": t.position_rule if algorithm == "a2c" else "argmax",
            "fee_bps": t.fee_bps,
            "slippage_bps": t.slippage_bps,
            "borrow_bps_per_hour": t.borrow_bps_per_hour,
            "seed": t.seed,
            "ensemble": t.ensemble,
            "target_volatility": t.target_volatility,
            "volatility_features": t.volatility_features,
            "downside_penalty": t.downside_penalty,
        }
        chosen = {**defaults, **{k: v for k, v in changes.items() if v is not None}}
        return cls(algorithm=algorithm, market=market, train=train, valid=valid, **chosen)

    @property
    def spec(self) -> FeatureSpec:
        """The (unfitted) feature spec of this request."""
        return FeatureSpec(features=tuple(self.features))

    @property
    def action_map(self) -> tuple[float, ...]:
        """Flat, then long positions in `position_steps` steps up to 1, then the same short
        when shorting is allowed: (0, 1), (0, 1, -1), (0, 0.5, 1), ..."""
        from pipeline.learn.rl.env import action_map

        return action_map(self.position_steps, self.shorting)

    @property
    def sizing(self) -> VolatilityTarget | None:
        """Position sizing by volatility target, or None for the action map's positions."""
        return VolatilityTarget.targeting(self.target_volatility, self.volatility_features)

    @property
    def member_seeds(self) -> tuple[int, ...]:
        """Seeds of the ensemble's members: disjoint for different master seeds, and the
        master seed itself for a single model."""
        return tuple(self.seed * self.ensemble + k for k in range(self.ensemble))
