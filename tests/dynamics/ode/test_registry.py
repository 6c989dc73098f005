"""The registry of methods agrees with dynamics.choices, builds the registered class, refuses unknown names with the
choices, and every registered method integrates y' = -lam y to its exact solution."""
import math

import pytest
import torch

from common.errors import ConfigError
from dynamics.choices import DEFAULT_METHOD, IMPLICIT, METHODS
from dynamics.ode import REGISTRY, Stepper, integrate, make_stepper, register
from dynamics.ode.dopri5 import Dopri5Stepper
from dynamics.ode.rock4 import Rock4Stepper

LAM = torch.tensor([0.5, 1.0, 2.0])
Y0 = torch.tensor([1.0, 2.0, 3.0])
LOW_ORDER = ("adaptive_heun", "fehlberg2", "bosh3", "RK23")


def decay(y, out=None):
    return torch.mul(y, -LAM, out=out) if out is not None else -LAM * y


def test_registry_and_choices_name_the_same_methods():
    assert set(REGISTRY) == {(b, m) for b, ms in METHODS.items() for m in ms}
    assert all(issubclass(cls, Stepper) for cls in REGISTRY.values())
    assert all((b, m) in REGISTRY for b, m in DEFAULT_METHOD.items())
    assert REGISTRY[("native", "dopri5")] is Dopri5Stepper and REGISTRY[("native", "rock4")] is Rock4Stepper


@pytest.mark.parametrize("backend,method", sorted(REGISTRY))
def test_every_method_reaches_the_exact_solution(backend, method):
    # order 2-3 methods need many steps at tight tolerances: keep them quick (adaptive_heun: 4,800 evaluations at 1e-6)
    rtol = 1e-4 if method == "adaptive_heun" else 1e-6 if method in LOW_ORDER else 1e-9
    st = make_stepper(backend, method, decay, 0.0, Y0, rtol=rtol, atol=1e-3 * rtol, t_bound=2.0)
    assert isinstance(st, REGISTRY[(backend, method)]) and st.rtol == rtol
    sol = integrate(st, 2.0)
    exact = Y0 * torch.exp(-2.0 * LAM)
    # global error against the exact solution; torchdiffeq's other methods estimate their error loosely (measured:
    # fehlberg2 5e-4 at rtol 1e-6, dopri8 1.8e-6 at rtol 1e-9), the implicit ones' estimates are looser too
    tol = 5e-3 if method in LOW_ORDER or method == "dopri8" else 1e-5 if method in IMPLICIT else 1e-7
    assert torch.allclose(sol.y_final, exact, rtol=tol, atol=0)
    assert float(sol(1.0)[1]) == pytest.approx(2.0 * math.exp(-1.0), rel=100 * tol)  # dense output


def test_unknown_names_say_what_to_choose():
    with pytest.raises(ConfigError, match="choose one of: native, torchdiffeq, scipy"):
        make_stepper("julia", "Tsit5", decay, 0.0, Y0, rtol=1e-9, atol=1e-12, t_bound=1.0)
    with pytest.raises(ConfigError, match="choose one of: dopri5, rock4"):
        make_stepper("native", "DOP853", decay, 0.0, Y0, rtol=1e-9, atol=1e-12, t_bound=1.0)


def test_register_checks_its_inputs():
    with pytest.raises(ConfigError, match="subclass"):
        register("native", "dopri5", object)
    with pytest.raises(ConfigError, match="dynamics.choices.METHODS"):
        register("native", "tsit5", Dopri5Stepper)
    with pytest.raises(ConfigError, match="already registered"):
        register("native", "dopri5", Rock4Stepper)
    register("native", "dopri5", Dopri5Stepper)  # the same binding again is harmless


def test_an_atol_floor_needs_the_native_backend():
    with pytest.raises(ConfigError, match="native"):
        make_stepper("scipy", "RK45", decay, 0.0, Y0, rtol=1e-9, atol=1e-12, t_bound=1.0, atol_floor=lambda y: y)
