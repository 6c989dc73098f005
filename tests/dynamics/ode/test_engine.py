"""The ODE engine on problems with exact solutions: event times, dense output, replay, stop, budgets."""
import math

import numpy as np
import pytest
import torch

from dynamics.ode.engine import Event, SaveAt, integrate
from dynamics.ode.registry import make_stepper

LAM = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
Y0 = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
BACKENDS = [("native", "dopri5"), ("torchdiffeq", "dopri5"), ("scipy", "DOP853")]


def decay(y, out=None):
    """y' = -lam y (exact: y0 exp(-lam t))."""
    return torch.mul(y, -LAM, out=out) if out is not None else -LAM * y


def exact(t):
    return Y0 * torch.exp(-LAM * t)


def stepper(backend, method, rtol=1e-12, t_end=10.0, f=decay, y0=Y0):
    return make_stepper(backend, method, f, 0.0, y0, rtol=rtol, atol=1e-3 * rtol, t_bound=t_end)


@pytest.mark.parametrize("backend,method", BACKENDS)
def test_event_times_match_the_exact_solution(backend, method):
    levels = (0.5, 0.1, 1e-3)
    ev = Event("y0", lambda t, y: float(y[0]), levels)
    sol = integrate(stepper(backend, method, t_end=20.0), 20.0, events=[ev])
    for lv, t_ev in zip(levels, sol.events["y0"]):
        t_exact = math.log(1.0 / lv) / 0.5
        assert t_ev == pytest.approx(t_exact, rel=1e-10, abs=0), (backend, lv)
        assert float(sol(t_ev)[0]) <= lv  # the reported time lies on the crossed side


@pytest.mark.parametrize("backend,method", BACKENDS)
def test_dense_output_anywhere_in_the_span(backend, method):
    sol = integrate(stepper(backend, method), 10.0)
    assert sol.status == "t_end" and sol.t_final == 10.0
    for t in np.random.default_rng(0).uniform(0, 10, 25):
        assert torch.allclose(sol(t), exact(float(t)), rtol=1e-10, atol=1e-14), t
    with pytest.raises(ValueError, match="outside the integrated span"):
        sol(10.5)


@pytest.mark.parametrize("backend,method", BACKENDS)
def test_saveat_values_and_upward_events(backend, method):
    """Rotation y = (sin t, cos t): saved values exact, the upward crossing of sin t = 0.5 at pi/6."""
    f = (lambda y, out=None: torch.stack([y[1], -y[0]], out=out) if out is not None else torch.stack([y[1], -y[0]]))
    y0 = torch.tensor([0.0, 1.0], dtype=torch.float64)
    ts = np.linspace(0, 3, 7)
    sol = integrate(stepper(backend, method, f=f, y0=y0, t_end=3.0), 3.0, saveat=SaveAt(ts),
                    events=[Event("up", lambda t, y: float(y[0]), (0.5,), direction=+1)])
    assert np.array_equal(sol.ts, ts)
    for t, y in zip(ts, sol.saved):
        assert float(y[0]) == pytest.approx(math.sin(t), abs=1e-10)
    assert sol.events["up"][0] == pytest.approx(math.pi / 6, rel=1e-10)


def test_stop_event_ends_the_run_on_the_crossing():
    stop = Event("stop", lambda t, y: float(y[2]), (0.3,))
    sol = integrate(stepper("native", "dopri5", t_end=100.0), 100.0, stop=stop,
                    saveat=SaveAt(np.linspace(0, 100, 1001)))
    t_exact = math.log(3.0 / 0.3) / 2.0
    assert sol.status == "stopped"
    assert sol.t_final == pytest.approx(t_exact, rel=1e-10)
    assert float(sol.y_final[2]) <= 0.3 and float(sol.y_final[2]) == pytest.approx(0.3, rel=1e-10)
    assert sol.ts[-1] <= sol.t_final  # nothing saved after the stop


def test_replayed_dense_output_is_bit_identical():
    """With no memory budget the engine keeps checkpoints and replays steps: same numbers, bit for bit."""
    full = integrate(stepper("native", "dopri5", rtol=1e-9), 10.0)
    lean = integrate(stepper("native", "dopri5", rtol=1e-9), 10.0, dense_budget_bytes=0)
    assert lean.stats["dense_mode"].startswith("checkpoint") and full.stats["dense_mode"] == "all steps kept"
    for t in np.random.default_rng(1).uniform(0, 10, 20):
        assert torch.equal(full(t), lean(t)), t
    assert lean.stats["replayed_steps"] > 0


def test_replay_starts_from_the_nearest_rebuilt_step():
    """Queries that alternate between neighbouring steps (a Brent search) replay each step about once, not from the
    checkpoint every time; the values stay bit-identical to the kept interpolants."""
    full = integrate(stepper("native", "dopri5", rtol=1e-11), 10.0)
    lean = integrate(stepper("native", "dopri5", rtol=1e-11), 10.0, dense_budget_bytes=0)
    dense = lean._dense
    i = len(dense.steps) - 3
    c = max(j for j in dense.checkpoints if j <= i)
    assert i - c >= 100  # a zero budget thins the checkpoints out: long replay chains
    mids = [0.5 * (dense.steps[k][0] + dense.steps[k][1]) for k in (i, i + 1)]
    before = lean.stats["replayed_steps"]
    for _ in range(10):
        for t in mids:
            assert torch.equal(full(t), lean(t)), t
    replayed = lean.stats["replayed_steps"] - before
    assert replayed == (i - c + 1) + 1, replayed  # the chain to step i once, then step i + 1 from step i


def test_step_budget_is_reported():
    sol = integrate(stepper("native", "dopri5"), 10.0, max_steps=5)
    assert sol.status == "max_steps" and "5 steps" in sol.message and sol.t_final < 10.0
