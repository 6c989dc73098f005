"""The native DOPRI5: tableau order conditions, convergence order and tolerance on exact solutions."""
import math

import numpy as np
import pytest
import torch

from dynamics.ode.dopri5 import A, B, B_HAT, C, Dopri5Stepper
from dynamics.ode.engine import SaveAt, integrate


def test_tableau_order_conditions():
    b, bh, c = np.array(B), np.array(B_HAT), np.array(C)
    Am = np.zeros((7, 7))
    for i, row in enumerate(A):
        Am[i, :len(row)] = row
    assert np.allclose(Am.sum(1), c, atol=1e-15)  # row sums are the nodes
    # 5th-order conditions for b, 4th-order for b_hat (a subset suffices to catch a wrong digit)
    for w, p in ((b, 5), (bh, 4)):
        for q in range(1, p + 1):
            assert w @ c ** (q - 1) == pytest.approx(1 / q, abs=1e-14)
        assert w @ Am @ c == pytest.approx(1 / 6, abs=1e-14)
        assert w @ (c * (Am @ c)) == pytest.approx(1 / 8, abs=1e-14)
    assert b @ Am @ Am @ c == pytest.approx(1 / 24, abs=1e-14)
    assert b @ Am @ (c * (Am @ c)) == pytest.approx(1 / 40, abs=1e-14)
    assert b @ Am @ Am @ Am @ c == pytest.approx(1 / 120, abs=1e-14)
    assert b @ (Am @ c) ** 2 == pytest.approx(1 / 20, abs=1e-14)


@pytest.fixture
def fixed_steps(monkeypatch):
    """With a huge tolerance and no growth factor the controller keeps the step h given."""
    from dynamics.ode import dopri5 as dopri

    monkeypatch.setattr(dopri, "MAX_FACTOR", 1.0)
    monkeypatch.setattr(dopri, "SAFETY", 1.0)


def rotation(y, out):
    return torch.stack([y[1], -y[0]], out=out)


def _fixed_step_error(h):
    """Error at t=1 of y' = [y2, -y1] (rotation), exact solution (cos t, -sin t), fixed steps h."""
    stepper = Dopri5Stepper(rotation, 0.0, torch.tensor([1.0, 0.0], dtype=torch.float64), rtol=1.0, atol=1e30,
                            first_step=h)
    sol = integrate(stepper, 1.0)
    assert sol.stats["n_steps"] == int(round(1 / h))
    return float(torch.linalg.vector_norm(sol.y_final - torch.tensor([math.cos(1.0), -math.sin(1.0)])))


def test_convergence_order_is_five(fixed_steps):
    errs = [_fixed_step_error(h) for h in (0.1, 0.05, 0.025)]
    orders = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(4.7 < p < 5.3 for p in orders), orders


@pytest.mark.parametrize("rtol", [1e-6, 1e-9, 1e-11])
def test_adaptive_error_tracks_tolerance(rtol):
    """Logistic growth from 1e-8 (an escape like the flow's): global relative error ~ rtol."""
    lam = 0.7

    def f(y, out):
        return torch.mul(y, lam * (1 - y), out=out)

    stepper = Dopri5Stepper(f, 0.0, torch.tensor([1e-8], dtype=torch.float64), rtol=rtol, atol=1e-3 * rtol * 1e-8)
    t = np.array([0.0, 10.0, 20.0, 30.0, 40.0])
    sol = integrate(stepper, 40.0, saveat=SaveAt(t))
    ys = np.array([float(y[0]) for y in sol.saved])
    y0 = 1e-8
    exact = y0 * np.exp(lam * t) / (1 - y0 + y0 * np.exp(lam * t))
    rel = np.abs(ys - exact) / exact
    assert rel.max() < 200 * rtol
    assert stepper.stats["n_steps"] > 0 and stepper.stats["nfe"] >= 6 * stepper.stats["n_steps"]


def test_dense_output_is_fourth_order_between_steps(fixed_steps):
    """The interpolant inside a step is the continuous extension: its error shrinks like h^5 locally."""
    errs = []
    for h in (0.2, 0.1, 0.05):
        stepper = Dopri5Stepper(rotation, 0.0, torch.tensor([1.0, 0.0], dtype=torch.float64), rtol=1.0,
                                atol=1e30, first_step=h)
        stepper.step(1.0)
        interp = stepper.interpolant()
        t = np.array([0.3 * h, 0.5 * h, 0.77 * h])  # all inside the first step
        ys = np.stack([interp(float(x)).numpy() for x in t])
        exact = np.stack([np.cos(t), -np.sin(t)], 1)
        errs.append(np.abs(ys - exact).max())
        assert torch.equal(interp(interp.t1), stepper.y)  # the end point is the step's own state
    orders = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(o > 4.6 for o in orders), orders


def test_collapsing_step_size_is_reported():
    """y' = y^2 from 1 blows up at t = 1: the step size collapses before, and the run says so."""
    stepper = Dopri5Stepper(lambda y, out: torch.mul(y, y, out=out), 0.0, torch.tensor([1.0], dtype=torch.float64),
                            rtol=1e-10, atol=1e-12)
    sol = integrate(stepper, 2.0)
    assert sol.status == "failed" and sol.t_final < 1.0
    assert "step size collapsed" in sol.message or "non-finite" in sol.message
