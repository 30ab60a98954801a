"""A Stable-Baselines3 PPO policy trained outside the pipeline, ready for `models register`.

What a quant with SB3 would do: train PPO on the project's gymnasium twin of the trading
environment (`TradingGymEnv`: same fills, costs and reward as the pipeline's own agents)
over the stored candles before the nightly's walk-forward folds, then export the policy
to ONNX with `torch.onnx.export`, as SB3's export guide does, wrapped to the model
contract (DESIGN.md): the input is the raw features and the position (the features'
normalization, fitted on the training window, is the wrapper's first layer) and the
output the policy's action logits. Then register it (the command is printed):

    .venv/bin/pip install -r requirements-bench.txt   # SB3 and a CPU torch (make bench-deps)
    python -m examples.sb3_ppo --market binance:BTC/USDT:1h --out ppo.onnx [--steps 50000]
    python -m pipeline models register ppo.onnx --market binance:BTC/USDT:1h \\
        --features ret_1,ret_24,ret_168,rsi_14,vol_168 --action-map 0,1
"""

from __future__ import annotations

import shlex
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.arguments import Parser, market, positive_int
from pipeline.settings import Market, Settings, load_settings
from pipeline.timeutil import DAY_MS

FEATURES = ("ret_1", "ret_24", "ret_168", "rsi_14", "vol_168")
ACTION_MAP = (0.0, 1.0)
INSTALL_HINT = (
    "Stable-Baselines3 and torch are not installed: `make bench-deps` (pip, not uv: uv would "
    "fetch a CUDA torch build)"
)


def training_window(settings: Settings, newest_end: int, days: int) -> tuple[int, int]:
    """[start, end) of `days` ending where the nightly's walk-forward folds begin, so
    the evidence `models register` computes is out of sample."""
    t = settings.training
    end = newest_end - t.folds * t.valid_days * DAY_MS
    return end - days * DAY_MS, end


def train_ppo(
    settings: Settings,
    target: Market,
    out: Path,
    *,
    steps: int = 50_000,
    days: int = 365,
    seed: int = 0,
    features: Sequence[str] = FEATURES,
) -> dict[str, Any]:
    """Train SB3 PPO on `days` of the stored candles of `target` before the folds and
    write the contract-wrapped ONNX policy to `out`; returns what `models register`
    needs to be told, and how long it took."""
    try:
        import torch
        from stable_baselines3 import PPO
    except ImportError as error:
        raise SystemExit(f"error: {INSTALL_HINT} ({error})") from error

    from pipeline.db.engine import opened
    from pipeline.errors import DataValidationError
    from pipeline.learn.features import FeatureSpec, fit_normalization
    from pipeline.learn.prepare import window_steps
    from pipeline.learn.rl.arrays import MarketArrays
    from pipeline.learn.rl.env import EnvConfig, TradingGymEnv
    from pipeline.learn.snapshot import latest_candle_end
    from pipeline.learn.windows import Window

    torch.set_num_threads(1)  # small batches: one thread is SB3's fastest on a CPU
    t = settings.training
    spec = FeatureSpec(features=tuple(features))
    with opened(settings.db_url) as engine:
        newest = latest_candle_end(engine, target)
        if newest is None:
            raise SystemExit(f"error: no stored candles of {target}: backfill it first")
        start, end = training_window(settings, newest, days)
        try:
            ts, opens, closes, rows = window_steps(
                engine, target, Window(start, end), spec.features, 1, f"{days} days of PPO"
            )
        except DataValidationError as error:
            raise SystemExit(f"error: {error}, or pass fewer --days") from error
    mean, std = contract_normalization(fit_normalization(spec, rows))
    data = MarketArrays.from_candles(ts, opens, closes, (rows - mean[:-1]) / std[:-1])
    env = TradingGymEnv(
        data,
        EnvConfig(
            num_envs=1,
            episode_length=min(t.episode_length, len(data) - 1),
            action_map=ACTION_MAP,
            fee_bps=t.fee_bps,
            slippage_bps=t.slippage_bps,
        ),
    )
    started = time.perf_counter()
    model = PPO("MlpPolicy", env, seed=seed, device="cpu", verbose=0)
    model.learn(total_timesteps=steps)
    seconds = time.perf_counter() - started
    export_contract(model.policy, mean, std, out)
    return {
        "path": str(out),
        "market": str(target),
        "features": list(spec.features),
        "action_map": list(ACTION_MAP),
        "train_window": [start, end],
        "steps": steps,
        "train_seconds": round(seconds, 1),
    }


def contract_normalization(fitted: Any) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of a whole observation: the fitted spec's for the features, then 0
    and 1 for the position, which passes unchanged."""
    mean = np.asarray([*fitted.mean, 0.0], np.float32)
    std = np.asarray([*fitted.std, 1.0], np.float32)
    return mean, std


def contract_policy(policy: Any, mean: Any, std: Any) -> Any:
    """The SB3 policy as the model contract's function (a torch module): raw features and
    the position in, the features normalized by `mean`/`std` (the position passes with
    mean 0, std 1), the policy's action logits out."""
    import torch

    class ContractPolicy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.policy = policy
            self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
            self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            normalized = (obs - self.mean) / self.std
            latent = self.policy.mlp_extractor.forward_actor(
                self.policy.extract_features(normalized, self.policy.pi_features_extractor)
            )
            return self.policy.action_net(latent)

    return ContractPolicy().eval()


def export_contract(policy: Any, mean: Any, std: Any, out: Path) -> Path:
    """`torch.onnx.export` of `contract_policy`: input `obs` [batch, features + 1] raw,
    output `logits` [batch, actions]."""
    import torch

    wrapped = contract_policy(policy, mean, std)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter on purpose: torch's newer one needs onnxscript as well
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            wrapped,
            (torch.zeros(1, len(mean)),),
            str(out),
            input_names=["obs"],
            output_names=["logits"],
            dynamic_axes={"obs": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return out


def register_command(result: dict[str, Any]) -> str:
    """The `models register` line for what `train_ppo` wrote."""
    return shlex.join(
        [
            "python", "-m", "pipeline", "models", "register", result["path"],
            "--market", result["market"], "--features", ",".join(result["features"]),
            "--action-map", ",".join(f"{a:g}" for a in result["action_map"]),
        ]
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="python -m examples.sb3_ppo", description=__doc__.splitlines()[0])
    parser.add_argument("--market", type=market, help="default: the first configured market")
    parser.add_argument("--out", type=Path, default=Path("ppo.onnx"), help="the ONNX file")
    parser.add_argument("--steps", type=positive_int, default=50_000, help="PPO env steps")
    parser.add_argument("--days", type=positive_int, default=365, help="training window")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    settings = load_settings()
    target = args.market or settings.markets[0]
    result = train_ppo(settings, target, args.out, steps=args.steps, days=args.days, seed=args.seed)
    print(f"PPO: {result['steps']} steps in {result['train_seconds']} s -> {result['path']}")
    print(f"register it:\n  {register_command(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
