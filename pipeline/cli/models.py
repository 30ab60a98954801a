"""`models`: the model registry: list, show, promote, rollback, register."""

from __future__ import annotations

import argparse
import json

from pipeline import arguments as arg
from pipeline.errors import ConfigurationError
from pipeline.settings import Settings


def add_models(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`models [--name N] list|show|promote|rollback|register`."""
    models = commands.add_parser(
        "models", help="the model registry: list, show, promote, rollback, register"
    )
    models.add_argument(
        "--name", help="model name (default: the first market's, e.g. binance-btc-usdt-1h)"
    )
    model_commands = models.add_subparsers(title="models commands")
    listing = model_commands.add_parser("list", help="every version, newest first")
    listing.set_defaults(handler=_models_list)
    show_model = model_commands.add_parser("show", help="one version in full")
    show_model.add_argument("version", type=arg.positive_int)
    show_model.set_defaults(handler=_models_show)
    promote = model_commands.add_parser("promote", help="gate a version and make it champion")
    promote.add_argument("version", type=arg.positive_int)
    promote.add_argument("--force", action="store_true", help="override failed gates")
    promote.add_argument("--reason", help="why (required with --force)")
    promote.add_argument(
        "--end", type=arg.iso_time, help="end of the evaluation window (default: latest candle)"
    )
    promote.set_defaults(handler=_models_promote)
    bring = model_commands.add_parser(
        "register", help="a policy trained elsewhere (ONNX file or URL) as a candidate"
    )
    bring.add_argument("source", help="the .onnx file: a path or any fsspec URL")
    bring.add_argument("--market", type=arg.market, required=True, help="what it trades")
    bring.add_argument(
        "--features", type=_names, required=True,
        help="the features it reads, in its input's order (comma-separated; raw values: "
        "normalization is inside the graph); its last input is the position",
    )  # fmt: skip
    bring.add_argument(
        "--action-map", type=_positions, required=True,
        help="the position each output stands for, comma-separated (e.g. 0,1 or -1,0,1)",
    )  # fmt: skip
    bring.add_argument("--position-rule", default="argmax", help="argmax (default) or expected")
    bring.add_argument(
        "--sizing", choices=("none", "target"), default="none",
        help="none (default): the action map's positions; target: sized by the volatility "
        "target as the learned policies are (training.target_volatility, read from the "
        "features training.volatility_features, which --features must name)",
    )  # fmt: skip
    bring.add_argument("--reason", help="why it is registered (kept in its lineage)")
    bring.set_defaults(handler=_models_register)
    back = model_commands.add_parser("rollback", help="champion back to the previous one")
    back.add_argument("--reason")
    back.set_defaults(handler=_models_rollback)


def _names(text: str) -> tuple[str, ...]:
    from pipeline.models.external import feature_names

    try:
        return feature_names(text)
    except ConfigurationError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positions(text: str) -> tuple[float, ...]:
    from pipeline.models.external import action_positions

    try:
        return action_positions(text)
    except ConfigurationError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _models_register(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.tasks.models import register_external

    result = register_external(
        settings, args.source, str(args.market), features=args.features,
        action_map=args.action_map, registered_by=_who(), position_rule=args.position_rule,
        sizing=args.sizing, reason=args.reason,
    )  # fmt: skip
    print(json.dumps(result, indent=2))
    return 0


def _model_name(settings: Settings, args: argparse.Namespace) -> str:
    from pipeline.models.registry import model_name

    return args.name or model_name(str(settings.markets[0]))


def _who() -> str:
    import getpass

    try:
        return f"{getpass.getuser()} (cli)"
    except (KeyError, OSError):
        return "cli"


def _models_list(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.learn.tables import text_table
    from pipeline.tasks.promote import versions

    rows = []
    for v in versions(settings, args.name):
        validation = (v["metrics"] or {}).get("validation", {})
        rows.append(
            [
                v["name"],
                str(v["version"]),
                v["algorithm"],
                v["status"],
                ",".join(v["aliases"]) or "-",
                f"{validation['sharpe']:.2f}" if "sharpe" in validation else "-",
                f"{validation['max_drawdown']:.1%}" if "max_drawdown" in validation else "-",
                v["training_run"] or "-",
                f"{v['created_at']:%Y-%m-%d %H:%M}",
            ]
        )
    header = [
        "name",
        "version",
        "algo",
        "status",
        "aliases",
        "val sharpe",
        "val dd",
        "run",
        "created",
    ]
    print(text_table(header, rows) if rows else "no model versions registered yet")
    return 0


def _models_show(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.tasks.promote import version

    row = version(settings, _model_name(settings, args), args.version)
    print(json.dumps(row, indent=2, default=str))
    return 0


def _models_promote(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.tasks.promote import promote_version

    name = _model_name(settings, args)
    event = promote_version(
        settings,
        name,
        args.version,
        who=_who(),
        reason=args.reason,
        force=args.force,
        end_ms=args.end,
    )
    forced = " (FORCED)" if event["forced"] else ""
    print(f"{name}: champion v{event['from_version'] or '-'} -> v{event['to_version']}{forced}")
    for check, result in event["gates"]["checks"].items():
        print(f"  {check:<20} {'pass' if result['passed'] else 'FAIL'}  {result}")
    return 0


def _models_rollback(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.tasks.promote import rollback

    name = _model_name(settings, args)
    event = rollback(settings, name, who=_who(), reason=args.reason)
    print(f"{name}: champion v{event['from_version']} -> v{event['to_version']} (rollback)")
    return 0
