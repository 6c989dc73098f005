"""The ODE solver stack: integrate y' = f(y) with saved outputs, events, a stop condition and dense output.

    from dynamics.ode import Event, SaveAt, Status, integrate, make_stepper
    stepper = make_stepper("native", "dopri5", f, 0.0, y0, rtol=1e-9, atol=1e-12, t_bound=10.0)
    sol = integrate(stepper, 10.0, events=[Event("y0", lambda t, y: float(y[0]), (0.5,))])
    sol.status is Status.T_END, sol.events["y0"], sol(3.0), sol.stats["nfe"]

One concept per module: :mod:`~dynamics.ode.base` (the Stepper / Interpolant contract), :mod:`~.controller`
(tolerances, error norm, accept/reject, atol floor), :mod:`~.dopri5` and :mod:`~.rock4` (the native methods),
:mod:`~.adapters` (torchdiffeq, scipy), :mod:`~.registry` (names -> classes), :mod:`~.status` (outcomes),
:mod:`~.tolerances` (defaults and ranges), :mod:`~.engine` (the integration loop).
"""
from dynamics.ode.base import Interpolant, SolverFailure, StepSizeCollapse, Stepper
from dynamics.ode.controller import PIController, Rock4Controller, RowAtol, StepController
from dynamics.ode.engine import Event, SaveAt, Solution, integrate
from dynamics.ode.registry import REGISTRY, make_stepper, register
from dynamics.ode.status import Status

__all__ = ["Event", "Interpolant", "PIController", "REGISTRY", "Rock4Controller", "RowAtol", "SaveAt", "Solution",
           "SolverFailure", "Status", "StepController", "StepSizeCollapse", "Stepper", "integrate", "make_stepper",
           "register"]
