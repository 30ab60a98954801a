"""`train`: train agents on stored candles, one fold or a walk-forward replay."""

from __future__ import annotations

import argparse

from pipeline import arguments as arg
from pipeline.errors import ConfigurationError
from pipeline.settings import Settings


def add_train(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`train`: one fold by default, `--walk-forward N` to replay the nightly procedure."""
    train = commands.add_parser(
        "train", help="train agents on stored candles, print validation metrics vs baselines"
    )
    train.add_argument(
        "--algo",
        action="append",
        choices=("dqn", "a2c"),
        help="algorithm (repeatable; default: training.algorithms of the settings)",
    )
    train.add_argument(
        "--market", type=arg.market, help="exchange:BASE/QUOTE:timeframe (default: first market)"
    )
    train.add_argument("--train-start", type=arg.iso_time, help="ISO date (UTC), inclusive")
    train.add_argument("--train-end", type=arg.iso_time, help="ISO date (UTC), exclusive")
    train.add_argument(
        "--valid-start", type=arg.iso_time, help="ISO date (UTC), inclusive (default: --train-end)"
    )
    train.add_argument("--valid-end", type=arg.iso_time, help="ISO date (UTC), exclusive")
    train.add_argument(
        "--steps", type=arg.positive_int, help="environment steps (default per algorithm)"
    )
    train.add_argument(
        "--envs", type=arg.positive_int, help="parallel episodes (default per algorithm)"
    )
    train.add_argument("--episode-length", type=arg.positive_int, help="decisions per episode")
    train.add_argument(
        "--decision-every",
        type=arg.positive_int,
        help="candles between decisions (default 24: daily)",
    )
    train.add_argument(
        "--seed", type=arg.non_negative_int, help="seed of weights, exploration and episodes"
    )
    train.add_argument("--shorting", action="store_true", help="allow short positions")
    train.add_argument(
        "--ensemble",
        type=arg.positive_int,
        metavar="K",
        help="seeds per algorithm averaged into one policy (default training.ensemble)",
    )
    train.add_argument(
        "--walk-forward",
        type=arg.positive_int,
        metavar="N",
        help="replay the nightly procedure over the N validation windows ending at "
        "--valid-end (each champion chosen before its window), beside the old single-seed "
        "procedure and the baselines; prints per fold and chained",
    )
    train.add_argument(
        "--seeds",
        type=arg.int_list,
        help="with --walk-forward: comma-separated master seeds to replay (default --seed)",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(handler=_train)


def _train(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.tasks.train import train_fold, walk_forward

    if args.seeds and not args.walk_forward:
        raise ConfigurationError(
            "--seeds replays several seeds of --walk-forward N: add --walk-forward, or train "
            "one seed with --seed"
        )
    market = args.market or settings.markets[0]
    algorithms = args.algo or list(settings.training.algorithms)
    changes = {
        "steps": args.steps,
        "num_envs": args.envs,
        "episode_length": args.episode_length,
        "decision_every": args.decision_every,
        "shorting": args.shorting or None,
    }
    if args.walk_forward:
        seeds = args.seeds or [args.seed if args.seed is not None else settings.training.seed]
        walk_forward(
            settings,
            market,
            args.walk_forward,
            seeds,
            algorithms,
            changes,
            valid_end=args.valid_end,
            progress=not args.quiet,
        )
        return 0
    changes |= {"seed": args.seed, "ensemble": args.ensemble}
    result = train_fold(
        settings,
        market,
        algorithms,
        changes,
        valid_end=args.valid_end,
        train_start=args.train_start,
        train_end=args.train_end,
        valid_start=args.valid_start,
        progress=not args.quiet,
    )
    best = result["best"]
    verdict = "beats" if best["beats_baselines"] else "does NOT beat"
    print(
        f"\nbest by validation Sharpe: {best['run_id']} ({best['algorithm']}, "
        f"Sharpe {best['sharpe']:.2f}; {verdict} every baseline)"
    )
    return 0
