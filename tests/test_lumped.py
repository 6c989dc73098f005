"""The symmetry-reduced flow (analysis.lumped) against the full flow: right-hand side, loss and crossings."""
import numpy as np
import pytest
import torch

from analysis.lumped import LumpedFlow, find_classes, run_lumped, worth_reducing
from dynamics import FlowConfig, run_flow
from models.population import PopulationObjective
from models.task import TaskConfig, make_task

CASES = [TaskConfig(S=16, R=4, D=8, zipf_subjects=1.0), TaskConfig(S=16, R=4, D=8),
         TaskConfig(S=16, R=4, D=8, zipf_relations=1.0), TaskConfig(S=12, R=3, D=4, facts="random", seed=1),
         TaskConfig(S=8, R=3, D=4, T=10, N=3, zipf_subjects=0.5)]


@pytest.mark.parametrize("cfg", CASES)
def test_reduced_rhs_is_the_full_rhs_on_the_symmetric_subspace(cfg):
    task = make_task(cfg)
    fl, obj = LumpedFlow(task), PopulationObjective(task)
    y = torch.randn(fl.size, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 0.7
    Wt, K = fl.expand(y)
    dW, dK = obj.layout.unpack(obj.flow_rhs(obj.layout.pack(Wt, K)))
    rW, rK = fl.expand(fl.rhs(y))
    assert float((dW - rW).abs().max()) <= 1e-13 * max(1.0, float(dW.abs().max()))
    assert float((dK - rK).abs().max()) <= 1e-13 * max(1.0, float(dK.abs().max()))
    assert fl.loss(y).item() == pytest.approx(obj.loss(Wt, K).item(), rel=1e-13)
    assert torch.allclose(fl.grad(y), fl.grad_autograd(y), rtol=1e-12, atol=1e-13)
    # the reduced coordinates are read back from the expanded state (those standing for no entry aside)
    back = fl.restrict(Wt, K)
    live = fl.mult > 0
    assert torch.equal(back[live], y[live])


def test_classes_of_the_shipped_symmetries():
    cl = find_classes(make_task(TaskConfig(S=16, R=4, D=8, zipf_subjects=1.0)))
    assert cl.sizes == (16, 1)  # distinct subjects, exchangeable relations
    cl = find_classes(make_task(TaskConfig(S=16, R=4, D=8, zipf_relations=1.0)))
    assert cl.sizes == (8, 4) and set(cl.m) == {2.0}  # two copies per answer block, distinct relations
    assert not worth_reducing(make_task(TaskConfig(S=16, R=4, D=8, zipf_subjects=1.0)))  # small: full flow
    assert worth_reducing(make_task(TaskConfig(S=256, R=16, D=16, zipf_subjects=1.0)))


def test_reduced_crossings_equal_the_full_flows():
    cfg = TaskConfig(S=16, R=4, D=8, zipf_subjects=1.0, zipf_relations=0.0)
    levels = (3.0, 2.0, 1.0, 0.3)
    sol, _ = run_lumped(make_task(cfg), alpha=1e-5, levels=levels, rtol=1e-11)
    run = run_flow(FlowConfig(task=cfg, alpha=1e-5, rtol=1e-11, loss_target=0.1), levels=levels)
    for lv, t in zip(levels, sol.events["loss"]):
        assert t == pytest.approx(run.crossings[lv], rel=1e-8)
