"""Results as plain-text tables: a policy's verdict against its baselines, the rows of a
walk-forward summary, fixed-width columns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pipeline.timeutil import iso

if TYPE_CHECKING:
    from pipeline.learn.onnx_evaluation import Evaluation
    from pipeline.learn.windows import Window


def verdict(metrics: Mapping[str, float], baselines: Mapping[str, Mapping[str, float]]) -> str:
    """'wins' when the policy's Sharpe beats every baseline's and its drawdown is no deeper
    than buy-and-hold's; otherwise what it lost to."""
    lost = [name for name, b in baselines.items() if metrics["sharpe"] <= b["sharpe"]]
    if "buy_and_hold" in baselines and (
        metrics["max_drawdown"] > baselines["buy_and_hold"]["max_drawdown"]
    ):
        lost.append("drawdown")
    return "wins" if not lost else "loses to " + ", ".join(lost)


def fold_summary(evaluations: Mapping[str, Evaluation], valid: Window) -> list[list[str]]:
    """Rows of a walk-forward summary: one per algorithm of one fold."""
    rows = []
    for algorithm, evaluation in evaluations.items():
        tests = evaluation.backtests
        baselines = {name: b.metrics for name, b in tests.items() if name != "policy"}
        rows.append(
            [
                f"{iso(valid.start)[:10]}..{iso(valid.end)[:10]}",
                algorithm,
                f"{evaluation.metrics['sharpe']:.2f}",
                f"{baselines['buy_and_hold']['sharpe']:.2f}",
                f"{baselines['momentum']['sharpe']:.2f}",
                f"{evaluation.metrics['total_return']:+.1%}",
                f"{baselines['buy_and_hold']['total_return']:+.1%}",
                f"{evaluation.metrics['max_drawdown']:.1%}",
                f"{baselines['buy_and_hold']['max_drawdown']:.1%}",
                verdict(evaluation.metrics, baselines),
            ]
        )
    return rows


WALK_FORWARD_HEADER = [
    "validation",
    "algo",
    "sharpe",
    "b&h sharpe",
    "mom sharpe",
    "return",
    "b&h return",
    "max dd",
    "b&h dd",
    "verdict",
]


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned fixed-width columns."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("-" * len(lines[0]))
    lines += [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join(lines)
