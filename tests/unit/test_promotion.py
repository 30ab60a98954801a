"""The promotion gates on plain numbers: walk-forward evidence and the Sharpe/drawdown gate."""

from __future__ import annotations

from pipeline.models.promotion import gates
from pipeline.settings import PromotionSettings


def test_walk_forward_evidence_decides_the_evidence_gate() -> None:
    candidate = {
        "window": [0, 1],
        "policy": {"sharpe": 2.0, "max_drawdown": 0.1},
        "buy_and_hold": {"sharpe": 0.5, "max_drawdown": 0.3},
        "psr": 0.99,
    }
    policy = PromotionSettings(min_dsr=0.9, max_fold_drawdown=0.25)

    def evidence(dsr: float, worst: float) -> dict:
        return {
            "confidence": {"dsr": dsr},
            "worst_drawdown": worst,
            "median_sharpe": 1.0,
            "folds": [{}] * 4,
        }

    assert gates(candidate, None, 0.0, policy, evidence(0.95, 0.2))["passed"]
    weak = gates(candidate, None, 0.0, policy, evidence(0.6, 0.2))
    assert not weak["passed"]
    assert weak["checks"]["evidence"]["source"] == "walk-forward, 4 folds"
    assert not gates(candidate, None, 0.0, policy, evidence(0.95, 0.4))["passed"]
    window_only = gates(candidate, None, 0.0, policy)["checks"]["evidence"]
    assert window_only["passed"]
    assert window_only["source"].startswith("the promotion window only")


def test_gates_compare_sharpe_with_a_margin_and_cap_the_drawdown() -> None:
    def result(sharpe: float, drawdown: float) -> dict:
        return {
            "window": [0, 1],
            "policy": {"sharpe": sharpe, "max_drawdown": drawdown},
            "buy_and_hold": {"sharpe": 0.5, "max_drawdown": 0.3},
            "psr": 0.99,
        }

    policy = PromotionSettings(sharpe_margin=0.2, max_drawdown=0.25)
    assert gates(result(1.3, 0.1), result(1.0, 0.1), 0.0, policy)["passed"]
    assert not gates(result(1.1, 0.1), result(1.0, 0.1), 0.0, policy)["passed"]
    assert not gates(result(1.3, 0.3), result(1.0, 0.1), 0.0, policy)["passed"]
    assert not gates(result(1.3, 0.1), None, 1e-3, policy)["passed"]
