"""Issue 23: hallucination()'s relation_loss is the relation-only loss when the loss leaves the band (the first time
L <= (1 - rho) H), visible stage or not, checked against an independent computation on the exact flow (run_flow's
crossing of that level and the metrics of the flow's dense output there). The value at the minimum distance is
reported separately as relation_loss_closest."""
import pytest

from analysis.theory.hallucination import RHO, hallucination
from dynamics import FlowConfig, run_flow
from models.task import TaskConfig, make_task
from helpers import PAPER


def _on_the_flow(cfg, alpha):
    task = make_task(cfg)
    H = task.entropy_given_relation()
    level = (1 - RHO) * H
    run = run_flow(FlowConfig(task=cfg, alpha=alpha, loss_target=0.5 * level), levels=(level,))
    t_end = run.crossings[level]
    return t_end, run.metrics_at(t_end)["relation_loss"]


@pytest.mark.slow
@pytest.mark.parametrize("cfg,alpha,visible", [
    (TaskConfig(S=8, R=7, D=8), 1e-5, False),   # the case: 0.5064 at the band exit, 0.4206 closest
    (PAPER, 1e-5, True),
])
def test_relation_loss_is_at_the_band_exit(cfg, alpha, visible):
    t_end, rel = _on_the_flow(cfg, alpha)
    h = hallucination(make_task(cfg), alpha=alpha)  # two-mode quadrature: not the flow
    assert h["method"] == "two-mode quadrature" and h["visible"] is visible
    assert h["t_end"] == pytest.approx(t_end, rel=1e-6)
    assert h["relation_loss"] == pytest.approx(rel, rel=1e-6)
    if not visible:
        assert h["relation_loss"] == pytest.approx(0.5064, abs=1e-4)
        assert h["relation_loss_closest"] == pytest.approx(0.4206, abs=1e-4)


def test_band_exit_value_without_integration():
    """The definition on hand-made curves: the relation-only loss at the first time L <= (1 - rho) H, and the
    value at the minimum distance beside it (fast; no flow)."""
    import numpy as np

    from analysis.theory.hallucination import _stage

    H = 1.0

    def rel(t):  # falls from 1 to 0, reaching rho H only at t = 5 log 10, after the loss left the band
        return float(np.exp(-t / 5))

    def loss(t):  # falls from 2 H past H without a plateau
        return float(2.0 * np.exp(-t / 3))

    ts = np.linspace(0.0, 20.0, 401)
    res = _stage(rel, loss, ts, H, 0.1)
    t_exit = -3 * np.log(0.45)  # 2 exp(-t/3) = 0.9
    assert not res["visible"]
    assert res["t_end"] == pytest.approx(t_exit, rel=1e-9)
    assert res["relation_loss"] == pytest.approx(rel(t_exit), rel=1e-9)
    assert res["relation_loss_closest"] == pytest.approx(rel(res["t_closest"]), rel=1e-12)
    assert res["relation_loss_closest"] != pytest.approx(res["relation_loss"], rel=1e-3)
