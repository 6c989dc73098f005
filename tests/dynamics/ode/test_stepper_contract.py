"""The Stepper contract (dynamics.ode.base): public step/interpolant/replay call the methods' hooks; interpolants
are exact at their ends, accurate inside (exact solution), and replays rebuild a step bit for bit."""
import math

import pytest
import torch

from dynamics.ode import Interpolant, Stepper, make_stepper

W = 2.0


def rotation(y, out=None):
    """y' = (w y1, -w y0): exact y(t) = (cos wt, -sin wt) from (1, 0)."""
    v = torch.stack([W * y[1], -W * y[0]])
    return out.copy_(v) if out is not None else v


CASES = [("native", "dopri5"), ("native", "rock4"), ("torchdiffeq", "dopri5"), ("scipy", "DOP853"), ("scipy", "RK45")]


def make(backend, method, rtol=1e-10):
    return make_stepper(backend, method, rotation, 0.0, torch.tensor([1.0, 0.0]), rtol=rtol, atol=1e-3 * rtol,
                        t_bound=3.0)


@pytest.mark.parametrize("backend,method", CASES)
def test_interpolant_is_exact_at_the_ends_and_accurate_inside(backend, method):
    st = make(backend, method)
    assert isinstance(st, Stepper)
    with pytest.raises(RuntimeError, match="no step taken"):
        st.interpolant()
    y_start = st.y.clone()
    t0, t1, h = st.step(3.0)
    assert (t0, st.t) == (0.0, t1) and 0 < t1 <= 3.0 and h == pytest.approx(t1 - t0, rel=1e-15)
    it = st.interpolant()
    assert isinstance(it, Interpolant) and it.nbytes > 0
    assert torch.equal(it(t1), st.y) and torch.allclose(it(t0), y_start, rtol=0, atol=1e-14)
    tm = 0.5 * (t0 + t1)
    exact = torch.tensor([math.cos(W * tm), -math.sin(W * tm)])
    assert torch.allclose(it(tm), exact, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend,method", [("native", "dopri5"), ("native", "rock4"), ("torchdiffeq", "dopri5")])
def test_replay_rebuilds_a_step_bit_for_bit(backend, method):
    st = make(backend, method)
    st.step(3.0)
    y0 = st.y.clone()
    t0, t1, h = st.step(3.0)
    first = st.interpolant()
    again = st.replay(t0, y0, t1, h)
    assert st.replayable
    for s in (t0 + 0.3 * h, t0 + 0.9 * h, t1):
        assert torch.equal(first(s), again(s))


def test_a_step_must_move_forward():
    st = make("native", "dopri5")
    with pytest.raises(ValueError, match="must lie after"):
        st.step(0.0)


def test_the_last_step_lands_on_t_bound():
    st = make("native", "dopri5", rtol=1e-6)
    while st.t < 3.0:
        st.step(3.0)
    assert st.t == 3.0
    assert float(st.y[0]) == pytest.approx(math.cos(6.0), abs=1e-5)
