"""The native ROCK4 (dynamics.ode.rock4): its tables, convergence order, accuracy, the real flow against DOPRI5,
bit-for-bit replay and dense output, and the stage count's response to stiffness."""
import math

import numpy as np
import pytest
import torch

from dynamics.flow.config import FlowConfig
from dynamics.ode.dopri5 import Dopri5Stepper
from dynamics.ode.engine import Event, SaveAt, integrate
from dynamics.flow.solve import run_flow
from dynamics.ode.rock4 import HRHO_MAX, MS, UNUSED_DEGREES, USED, Rock4Stepper, degree_index
from dynamics.choices import DEFAULT_METHOD
from dynamics.ode.registry import make_stepper
from dynamics.ode.base import StepSizeCollapse
from models.task import TaskConfig
from helpers import PAPER, TINY


def _trial(f, y0, h, ms):
    """(y1, y1_hat) of one ROCK4 step of degree ms and size h from y0 (no step-size control)."""
    st = Rock4Stepper(f, 0.0, y0, 1.0, 1.0, fixed_step=h, fixed_stages=ms)
    y1, _, err = st._advance(st.y, st.f0, h, MS.index(ms), st._bufs())
    return y1.clone(), y1 - err


def test_tables_give_order_4_with_an_embedded_order_3_for_every_degree():
    """On y' = z y a step of size 1 gives R(z) y0; with y the Taylor coefficients in z and f the shift
    (multiplication by z), one step returns the coefficients of R itself: exactly those of exp(z) up to z^4
    (z^3 for the embedded solution) for all 50 tabulated degrees, and not beyond (the order is not higher)."""
    N = 7
    exp_coef = torch.tensor([1 / math.factorial(k) for k in range(N)], dtype=torch.float64)

    def shift(y, out):
        out[0] = 0.0
        out[1:] = y[:-1]
        return out

    for ms in MS:
        R, R_hat = _trial(shift, torch.eye(N, dtype=torch.float64)[0], 1.0, ms)
        assert torch.allclose(R[:5], exp_coef[:5], rtol=0, atol=1e-13), ms
        assert torch.allclose(R_hat[:4], exp_coef[:4], rtol=0, atol=1e-13), ms
        assert abs(float(R[5] - exp_coef[5])) > 1e-4 and abs(float(R_hat[4] - exp_coef[4])) > 1e-6, ms


def test_stability_intervals_of_the_degrees_used():
    """|R(x)| <= 1 on the stage rule's interval [-(0.353 s^2 - 3), 0] (s = ms + 4) for every degree used;
    the two degrees left out exceed 1 near x = -8."""
    for i, ms in enumerate(MS):
        s = ms + 4
        x = -np.linspace(0.0, 0.999 * (0.353 * s * s - 3), 20001)
        lam = torch.tensor(x)
        R, _ = _trial(lambda y, out: torch.mul(y, lam, out=out), torch.ones(len(x)), 1.0, ms)
        worst = float(R.abs().max())
        if ms in UNUSED_DEGREES:
            assert worst > 1.004 and i not in USED
        else:
            assert worst <= 1 + 1e-9, (ms, worst)
    assert degree_index(0.0) == 0 and MS[degree_index(HRHO_MAX - 1)] == MS[USED[-1]] == 138
    assert MS[degree_index(1000.0)] == 50  # 0.353 * 54^2 - 3 = 1026 is the first interval past 1000


# ---------------------------------------------------------------- a stiff linear problem with exact solution
N_LIN = 30


def _linear(lam_max=1000.0, lam_min=0.1, n=N_LIN):
    """y' = A y, A = Q diag(lam) Q^T with lam spread over [-lam_max, -lam_min]: (f, Q, lam, exact(c, t))."""
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = -torch.logspace(math.log10(lam_min), math.log10(lam_max), n, dtype=torch.float64)
    A = Q @ torch.diag(lam) @ Q.T

    def f(y, out=None):
        return torch.mv(A, y, out=out)

    def exact(c, t):
        return Q @ (torch.exp(lam * t) * c)

    return f, Q, lam, exact


def test_convergence_order_is_four_on_a_stiff_linear_problem():
    """Fixed steps h and 24 stages (stable up to h rho ~ 200) on eigenvalues in [-1000, -0.1]: the global
    error at t = 2 falls by 2^4 per halving of h. The initial state lies in the slow modes (the fast ones
    carry no amplitude, as on the flow's plateaus, where they are slaved): only their stability is tested."""
    f, Q, lam, exact = _linear()
    c = torch.where(lam >= -1.0, 1.0, 0.0)
    errs = []
    for h in (2.0**-3, 2.0**-4, 2.0**-5, 2.0**-6):  # binary fractions: the steps land on t = 2 exactly
        st = Rock4Stepper(f, 0.0, Q @ c, 1.0, 1.0, fixed_step=h, fixed_stages=20)
        sol = integrate(st, 2.0)
        assert sol.stats["n_steps"] == round(2.0 / h) and sol.stats["n_rejected"] == 0
        assert sol.stats["nfe_spectral"] == 0 and sol.stats["nfe"] == 1 + 24 * sol.stats["n_steps"]
        errs.append(float((sol.y_final - exact(c, 2.0)).abs().max()))
    orders = [math.log2(errs[i] / errs[i + 1]) for i in range(len(errs) - 1)]
    assert all(3.6 <= p <= 4.4 for p in orders), (errs, orders)
    # with too few stages for h rho = 125 the same step is unstable
    st = Rock4Stepper(f, 0.0, Q @ c, 1.0, 1.0, fixed_step=2.0**-3, fixed_stages=5)
    assert not float(integrate(st, 2.0).y_final.abs().max()) < 10


def test_adaptive_solution_matches_the_exact_one_at_tight_tolerance():
    """All modes excited (a stiff transient, then the slow decay), rtol 1e-10: max error over 21 times,
    relative to the size of the state at that time, ~ rtol."""
    f, Q, lam, exact = _linear()
    c = torch.ones(N_LIN, dtype=torch.float64)
    ts = np.linspace(0.0, 2.0, 21)
    st = Rock4Stepper(f, 0.0, Q @ c, 1e-10, 1e-13)
    sol = integrate(st, 2.0, saveat=SaveAt(ts))
    got = torch.stack(sol.saved)
    ex = torch.stack([exact(c, float(t)) for t in ts])
    rel = float(((got - ex).abs().amax(1) / ex.abs().amax(1)).max())
    assert rel < 1e-9, rel
    assert 1000 <= st.stats["rho"] <= 1.5 * 1000  # the power iteration found the stiffest eigenvalue (x 1.2)


# ---------------------------------------------------------------- the real flow against DOPRI5
FLOWS = [PAPER, TaskConfig(S=32, R=4, D=4, facts="random"),
         TaskConfig(S=12, R=3, D=3, zipf_subjects=1.0)]


@pytest.mark.slow
@pytest.mark.parametrize("task", FLOWS, ids=["S16", "S32-random", "S12-zipf"])
def test_flow_matches_dopri5_at_tight_tolerance(task):
    runs = {m: run_flow(FlowConfig(task=task, method=m, rtol=1e-10)) for m in ("dopri5", "rock4")}
    a, b = runs["dopri5"], runs["rock4"]
    assert a.status == b.status == "converged"
    assert b.solver["method"] == "rock4" and b.solver["nfe_spectral"] > 0
    assert abs(b.t_final - a.t_final) <= 1e-6 * a.t_final
    ta, tb = np.asarray(a.trajectory["t"]), np.asarray(b.trajectory["t"])
    common = np.intersect1d(ta[:-1], tb[:-1])  # the saved grid (the last row is each run's own t_final)
    assert len(common) > 100
    la = np.asarray(a.trajectory["loss"])[np.searchsorted(ta, common)]
    lb = np.asarray(b.trajectory["loss"])[np.searchsorted(tb, common)]
    assert np.max(np.abs(lb - la) / np.abs(la)) <= 1e-6
    assert max(b.conservation.values()) <= 1e-8


# ---------------------------------------------------------------- replay and dense output
def test_replay_is_bit_for_bit_and_dense_output_is_accurate():
    f, Q, lam, exact = _linear()
    c = torch.ones(N_LIN, dtype=torch.float64)
    rtol = 1e-8
    st = Rock4Stepper(f, 0.0, Q @ c, rtol, 1e-3 * rtol)
    worst_mid = 0.0
    while st.t < 2.0:
        y_start = st.y.clone()
        t0, t1, h = st.step(2.0)
        it = st.interpolant()
        assert torch.equal(it(t0), y_start) and torch.equal(it(t1), st.y)
        rep = st.replay(t0, y_start, t1, h)
        mid = t0 + 0.5 * h
        assert torch.equal(rep(t1), st.y) and torch.equal(rep(mid), it(mid))
        ex = exact(c, mid)
        worst_mid = max(worst_mid, float((it(mid) - ex).abs().max() / ex.abs().max()))
    assert worst_mid < 10 * rtol, worst_mid
    assert st.stats["nfe_replay"] > 0
    with pytest.raises(ValueError):
        st.replay(t0, y_start, t1, 0.5 * h)  # not a recorded step


def test_dense_output_by_replay_equals_the_kept_interpolants():
    """The engine's dense output with every interpolant kept, and with none kept (checkpoints + replay),
    gives the same states bit for bit; an event is located on the interpolant to ~rtol."""
    f, Q, lam, exact = _linear()
    c = torch.ones(N_LIN, dtype=torch.float64)
    y0 = Q @ c

    def g(t, y):  # |y|^2 decreases monotonically (A is symmetric negative definite)
        return float(y @ y)

    level = 2 * g(1.0, exact(c, 1.0))  # crossed once, before t = 1

    sols = [integrate(Rock4Stepper(f, 0.0, y0, 1e-9, 1e-12), 3.0, events=[Event("y0", g, (level,))],
                      dense_budget_bytes=b) for b in (2**30, 0)]
    assert sols[0].stats["dense_mode"] == "all steps kept" and sols[1].stats["dense_mode"].startswith("checkpoint")
    for t in (0.0123, 0.5, 1.7, 2.999):
        assert torch.equal(sols[0](t), sols[1](t))
    tc = sols[0].events["y0"][0]
    assert tc is not None and sols[1].events["y0"][0] == tc
    assert 0 < tc < 1 and abs(g(tc, exact(c, tc)) - level) < 1e-7 * level


# ---------------------------------------------------------------- stiffness: stages and cost
@pytest.mark.slow
def test_stage_count_grows_with_stiffness_and_beats_dopri5():
    """Slow modes in [-1, -0.1] plus fast ones up to -lam_max: more stages when rho grows, and far fewer
    evaluations than DOPRI5 at the same rtol once the stiffness ratio is >= 1000."""
    means = []
    for lam_max in (1e2, 1e3, 1e4):
        f, Q, lam, exact = _linear(lam_max=lam_max)
        y0 = Q @ torch.where(lam >= -1.0, 1.0, 0.0)
        st = Rock4Stepper(f, 0.0, y0, 1e-6, 1e-9)
        sol = integrate(st, 5.0)
        assert lam_max <= st.stats["rho"] <= 1.5 * lam_max
        means.append(st.stats["stages_mean"])
        assert st.stats["nfe"] > st.stats["nfe_spectral"] > 0
        if lam_max == 1e3:  # stiffness ratio lam_max / 0.1 = 1e4
            dp = Dopri5Stepper(f, 0.0, y0, 1e-6, 1e-9)
            integrate(dp, 5.0)
            assert st.stats["nfe"] < 0.5 * dp.stats["nfe"], (st.stats, dp.stats)
        assert float((sol.y_final - exact(torch.where(lam >= -1.0, 1.0, 0.0), 5.0)).abs().max()) < 1e-4
    assert means[0] < means[1] < means[2], means


def test_registration_and_failures():
    assert DEFAULT_METHOD["native"] == "dopri5"  # rock4 is offered, not the default
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    st = make_stepper("native", "rock4", lambda y, out=None: torch.stack([y[1], -y[0]], out=out), 0.0, y0,
                      rtol=1e-6, atol=1e-9, t_bound=1.0)
    assert isinstance(st, Rock4Stepper)
    assert FlowConfig(task=TINY, method="rock4").method == "rock4"
    with pytest.raises(ValueError):
        Rock4Stepper(lambda y, out: out.copy_(y), 0.0, y0, 1e-6, 1e-9, fixed_stages=21)  # not tabulated
    # y' = y^2 from 1 blows up at t = 1: the step size collapses (or the state overflows) before
    blow = Rock4Stepper(lambda y, out: torch.mul(y, y, out=out), 0.0, torch.tensor([1.0], dtype=torch.float64),
                        1e-10, 1e-12)
    sol = integrate(blow, 2.0)
    assert sol.status == "failed" and 0.99 < sol.t_final < 1.0 + 1e-6
    assert "step size collapsed" in sol.message or "non-finite" in sol.message
    blow = Rock4Stepper(lambda y, out: torch.mul(y, y, out=out), 0.0, torch.tensor([1.0], dtype=torch.float64),
                        1e-10, 1e-12)
    with pytest.raises(StepSizeCollapse):
        for _ in range(100_000):
            blow.step(2.0)
