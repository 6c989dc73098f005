"""The step-size controller: checked tolerances, the error norm, accept/reject and the next-step factors against
their formulas, and the atol floor that the controller raises itself (nobody assigns a stepper's atol)."""
import math

import numpy as np
import pytest
import torch

from common.errors import ConfigError
from dynamics.ode.controller import PIController, Rock4Controller, RowAtol, StepController
from dynamics.ode.dopri5 import Dopri5Stepper
from dynamics.ode.engine import integrate
from dynamics.ode.rock4 import Rock4Stepper
from dynamics.ode.tolerances import ATOL_FACTOR


@pytest.mark.parametrize("rtol,atol", [(-1e-9, 1e-12), (0.0, 1e-12), (math.nan, 1e-12), (1e-9, 0.0),
                                       (1e-9, math.inf), ("tight", 1e-12)])
def test_bad_tolerances_are_refused_with_a_fix(rtol, atol):
    with pytest.raises(ConfigError, match="must be a finite number > 0|is not a number"):
        StepController(rtol, atol)
    with pytest.raises(ConfigError):  # the steppers check through their controller, before any evaluation
        Dopri5Stepper(lambda y, out: out.zero_(), 0.0, torch.ones(2), rtol, atol)


def test_a_tensor_atol_needs_every_entry_positive():
    with pytest.raises(ConfigError, match="every entry"):
        StepController(1e-9, torch.tensor([1e-12, 0.0]))
    assert StepController(1e-9, torch.tensor([1e-12, 1e-3])).atol[1] == 1e-3


def test_norm_is_the_scaled_rms():
    y0, y1 = torch.tensor([1.0, -2.0, 0.0]), torch.tensor([1.5, -1.0, 1e-3])
    err = torch.tensor([1e-6, -3e-6, 2e-9])
    c = StepController(1e-3, 1e-6)
    want = np.sqrt(np.mean((err.numpy() / (1e-6 + 1e-3 * np.maximum(np.abs(y0.numpy()), np.abs(y1.numpy())))) ** 2))
    got = c.norm(err.clone(), y0, y1, torch.empty(3), torch.empty(3))
    assert got == pytest.approx(want, rel=1e-14)
    assert c.accepts(1.0) and not c.accepts(1.0 + 1e-15) and not c.accepts(math.nan)


def test_pi_factors_follow_hairer_wanner():
    c = PIController(1e-6, 1e-9, order=5)
    expo = 0.04 * 0.75 - 0.2
    assert c.reject_factor(2.0) == pytest.approx(0.9 * 2.0 ** expo, rel=1e-15)
    assert c.reject_factor(1e12) == 0.2  # clipped below
    assert c.accept_factor(0.5) == pytest.approx(0.9 * 0.5 ** expo * 1e-4 ** 0.04, rel=1e-15)
    assert c.err_old == 0.5  # remembered for the next accepted step
    assert c.accept_factor(0.0) == 10.0  # clipped above (ratio floored at 1e-10)
    with pytest.raises(ConfigError, match="min_factor"):
        PIController(1e-6, 1e-9, order=5, min_factor=2.0)


def test_rock4_factor_limits_after_a_rejection():
    c = Rock4Controller(1e-6, 1e-9)
    assert c.accept_factor(1e-12, 1.0) == 5.0  # first step: growth limited to 5
    assert c.accept_factor(1e-12, 1.0) == 2.0  # then to 2
    assert c.reject_factor(math.nan) == 0.1
    assert c.accept_factor(1e-12, 0.5) == 1.0  # the step after a rejection does not grow
    # two accepted steps in a row: the predictive factor errp^(1/4) fac^2 (h / hp) when it is smaller
    c.accept_factor(0.5, 1.0)
    fac = 0.25 ** -0.25
    assert c.accept_factor(0.25, 1.0) == pytest.approx(0.8 * min(fac, 0.5 ** 0.25 * fac * fac), rel=1e-15)


class _Layout:
    """A state of C rows of |A| entries followed by C entries (the flow's packing, in miniature)."""

    def __init__(self, C, A):
        self.C, self.A = C, A

    def unpack(self, y):
        return y[:self.C * self.A].view(self.C, self.A), y[self.C * self.A:]


def test_row_floor_is_max_of_atol_and_the_row_maximum():
    lay = _Layout(2, 3)
    y = torch.tensor([1e-3, -4.0, 2.0, 1e-30, 2e-30, -3e-30, 7.0, 8.0])
    f = RowAtol(lay, y, rtol=1e-9, atol=1e-33)
    want = np.array([4.0 * ATOL_FACTOR * 1e-9] * 3 + [max(1e-33, 3e-30 * ATOL_FACTOR * 1e-9)] * 3 + [1e-33] * 2)
    np.testing.assert_allclose(f(y).numpy(), want, rtol=1e-15)


@pytest.mark.parametrize("cls", [Dopri5Stepper, Rock4Stepper])
def test_the_floor_updates_itself_after_steps_1_9_17(cls):
    calls = []

    def floor(y):
        calls.append(st.n_accepted)
        return torch.full_like(y, 1e-10 * (1 + len(calls)))

    lam = torch.tensor([1.0, 3.0])
    st = cls(lambda y, out: torch.mul(y, -lam, out=out), 0.0, torch.tensor([1.0, 2.0]), 1e-8, 1e-12, atol_floor=floor)
    assert st.atol == 1e-12
    for _ in range(20):
        st.step(100.0)
    assert calls == [1, 9, 17]
    assert float(st.atol[0]) == 1e-10 * 4  # the last floor is in force
    with pytest.raises(AttributeError):  # nobody assigns a stepper's atol from outside
        st.atol = 1e-3


def test_a_floor_changes_the_steps_as_assigning_it_by_hand_did():
    """The controller's floor gives the very steps of the old rule (stepper.atol = floor(y) after accepted steps
    1, 9, 17, ..., from outside) -- reproduced here by a hand-driven reference that sets the controller's atol."""
    lam = torch.tensor([1.0, 50.0, 1e-3])
    f = lambda y, out: torch.mul(y, -lam, out=out)  # noqa: E731
    y0 = torch.tensor([1.0, 1e-20, 3.0])
    floor = lambda y: y.abs().max() * 1e-12 * torch.ones_like(y)  # noqa: E731
    a = integrate(Dopri5Stepper(f, 0.0, y0, 1e-9, 1e-30, atol_floor=floor), 30.0)
    ref = Dopri5Stepper(f, 0.0, y0, 1e-9, 1e-30)
    ts = []
    while ref.t < 30.0:
        ts.append(ref.step(30.0)[1])
        if ref.n_accepted % 8 == 1:
            ref.controller._atol = floor(ref.y)
    b = integrate(Dopri5Stepper(f, 0.0, y0, 1e-9, 1e-30), 30.0)
    assert a.stats["n_steps"] == len(ts) < b.stats["n_steps"]  # the floor saves steps on the tiny entry
    assert torch.equal(a.y_final, ref.y)
    assert float(a.y_final[0]) == pytest.approx(math.exp(-30.0), rel=1e-7)
