"""The symmetry-reduced flow (analysis.theory.lumped) against the full flow: right-hand side, loss and crossings."""
import numpy as np
import pytest
import torch

from analysis.theory.lumped import LumpedFlow, find_classes, run_lumped, symbolic_reduced_loss, worth_reducing
from dynamics import FlowConfig, run_flow
from models.population import PopulationObjective
from models.task import TaskConfig, make_task
from helpers import PAPER, RANDOM

CASES = [TaskConfig(S=16, R=4, D=8, zipf_subjects=1.0), PAPER,
         TaskConfig(S=16, R=4, D=8, zipf_relations=1.0), RANDOM,
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


@pytest.mark.slow
def test_reduced_crossings_equal_the_full_flows():
    cfg = TaskConfig(S=16, R=4, D=8, zipf_subjects=1.0, zipf_relations=0.0)
    levels = (3.0, 2.0, 1.0, 0.3)
    sol, _ = run_lumped(make_task(cfg), alpha=1e-5, levels=levels, rtol=1e-11)
    run = run_flow(FlowConfig(task=cfg, alpha=1e-5, rtol=1e-11, loss_target=0.1), levels=levels)
    for lv, t in zip(levels, sol.events["loss"]):
        assert t == pytest.approx(run.crossings[lv], rel=1e-8)


@pytest.mark.slow
def test_symbolic_reduction_is_the_full_flow_on_the_subspace():
    """Proof by simplification to 0 on a small task with both symmetries and unequal weights: subjects 1 and 2
    are copies, the two relations exchangeable. The full loss is written symbolically over every compressed
    entry; on the symmetric subspace its gradient (per real entry) equals -(1/m) dL_red/dtheta."""
    import sympy as sp

    from models.task import TaskConfig, make_task
    from models.weights import normalized

    cl = find_classes(make_task(TaskConfig(S=4, R=2, D=2, T=4, N=2)), normalized(
        "w", np.array([[1, 1], [1, 1], [2, 2], [3, 3]], float), 4, 2))
    assert cl.sizes == (3, 1) and sorted(cl.m) == [1.0, 1.0, 2.0]  # subjects 0 and 1 are copies
    task = make_task(TaskConfig(S=4, R=2, D=2, T=4, N=2))
    w = normalized("w", np.array([[1, 1], [1, 1], [2, 2], [3, 3]], float), 4, 2)
    L_red, coords = symbolic_reduced_loss(cl, task.D, task.T)
    flow = LumpedFlow(task, w, cl)
    names = list(flow.shapes)
    flat_syms = []
    for n in names:
        flat_syms += list(np.array(coords[n], dtype=object).reshape(-1))
    # the full compressed state as expressions of the reduced symbols (LumpedFlow.expand on objects)
    S, R, A = task.S, task.R, task.num_answers
    full = [[sp.Symbol(f"W_{z}_{a}") for a in range(A)] for z in range(S + R + 2)]
    Kf = [sp.Symbol(f"K_{z}") for z in range(S + R + 2)]
    xi = {}
    for s in range(S):
        for r in range(R):
            xi[s, r] = [full[s][a] * Kf[s] + full[S + r][a] * Kf[S + r] + (task.T - 3) * full[S + R][a] * Kf[S + R]
                        + full[S + R + 1][a] * Kf[S + R + 1] for a in range(A)]
    L_full = sum(sp.nsimplify(w[s, r]) * (sp.log(sum(sp.exp(x) for x in xi[s, r])) - xi[s, r][task.answers[s, r]])
                 for s in range(S) for r in range(R))
    # substitution: every full entry -> its reduced coordinate (index maps from expand() on a numbered state)
    idx = torch.arange(flow.size, dtype=torch.float64) + 1.0
    Wt_i, K_i = flow.expand(idx)
    sub = {}
    for z in range(S + R + 2):
        for a in range(A):
            sub[full[z][a]] = flat_syms[int(Wt_i[z, a]) - 1]
        sub[Kf[z]] = flat_syms[int(K_i[z]) - 1]
    speed = {}  # one real entry's rate: noise rows count per noise token, (T-3)/N of the representative's
    mult = flow.mult.numpy()
    for i, sym in enumerate(flat_syms):
        if mult[i] > 0:
            speed[sym] = sp.Rational(1, int(mult[i]))
    rng = np.random.default_rng(0)
    checked = 0
    for z in list(range(S + R + 2)):
        for entry in full[z][:2] + [Kf[z]]:
            rep = sub[entry]
            g_full = sp.diff(L_full, entry)
            if z == S + R:  # the representative noise row: the gradient of ONE noise token is 1/N of it
                g_full = g_full / task.N
            g_red = speed[rep] * sp.diff(L_red, rep)
            diff = (g_full.subs(sub) - g_red)
            # exact zero by simplification, checked also numerically at a random point
            point = {s_: sp.Float(rng.normal(), 30) for s_ in flat_syms}
            assert abs(float(diff.subs(point))) < 1e-25
            assert sp.simplify(diff) == 0
            checked += 1
    assert checked == 3 * (S + R + 2)
    # the numeric reduced loss is the symbolic one
    y = torch.randn(flow.size, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.5
    val = float(L_red.subs({s_: float(v) for s_, v in zip(flat_syms, y.tolist())}))
    assert val == pytest.approx(flow.loss(y).item(), rel=1e-12)
