"""Adapters: other libraries' solvers as steppers of :mod:`dynamics.ode.engine` (contract:
:class:`dynamics.ode.base.Stepper`), independent implementations to check the native ones against.

- ``torchdiffeq``: torchdiffeq's adaptive Runge-Kutta methods (:class:`TorchdiffeqStepper`);
- ``scipy``: scipy.integrate's OdeSolver classes (DOP853, RK45, ..., and the implicit LSODA/BDF/Radau
  for small problems), stepped one accepted step at a time with their own dense output (:class:`ScipyStepper`).

Their error norms and step-size control are the libraries' own; the :class:`dynamics.ode.controller.
StepController` of an adapter holds and checks the tolerances it passes on (and has no atol floor: the flow's
per-row floor needs the native backend).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from common.errors import ConfigError

from dynamics.choices import IMPLICIT
from dynamics.ode.base import Interpolant, SolverFailure, Stepper, initial_step
from dynamics.ode.controller import StepController

TORCHDIFFEQ_ORDER = dict(dopri5=5, dopri8=8, bosh3=3, adaptive_heun=2, fehlberg2=2)
SCIPY_RTOL_MIN = 100 * float(np.finfo(np.float64).eps)  # scipy.integrate's floor (2.2e-14; it warns below)


class _Counted(torch.nn.Module):
    """Wraps f(y) for torchdiffeq, counting evaluations and accepted/rejected steps into ``stats``."""

    def __init__(self, f, stats, prefix=""):
        super().__init__()
        self.f, self.stats, self.prefix = f, stats, prefix

    def forward(self, t, y):
        self.stats[self.prefix + "nfe"] += 1
        return self.f(y)

    def callback_accept_step(self, t0, y0, dt):
        self.stats[self.prefix + "n_steps"] += 1
        self.stats["last_dt"] = float(dt)

    def callback_reject_step(self, t0, y0, dt):
        self.stats[self.prefix + "n_rejected"] += 1


class TorchdiffeqInterp(Interpolant):
    """Dense output of one engine step of torchdiffeq: ``odeint`` from the step's start again.

    torchdiffeq never forces a step onto an output time (it interpolates), so asking for an extra time
    inside [t0, t1] takes the very same internal steps and reads the value off torchdiffeq's own
    interpolant. Holds one (P,) vector.
    """

    def __init__(self, stepper, t0, t1, h, y0, y1):
        self.stepper, self.t0, self.t1, self.h, self.y0, self.y1 = stepper, t0, t1, h, y0, y1

    @property
    def nbytes(self) -> int:
        return 2 * self.y0.numel() * self.y0.element_size()

    def __call__(self, t: float) -> torch.Tensor:
        if t == self.t1:
            return self.y1
        if t == self.t0:
            return self.y0
        return self.stepper._odeint(self.y0, [self.t0, t, self.t1], self.h, replay=True)[1]


def _no_floor(backend: str, atol_floor) -> None:
    if atol_floor is not None:
        raise ConfigError(f"an atol floor is not available with backend {backend!r} (its library controls the "
                          "steps); use backend 'native' or pass atol_floor=None")


class TorchdiffeqStepper(Stepper):
    """torchdiffeq's adaptive methods, one engine step = one ``odeint`` call over about two internal steps."""

    replayable = True

    def __init__(self, f, method: str, t0: float, y0: torch.Tensor, rtol: float, atol: float):
        super().__init__(t0, y0, StepController(rtol, atol))
        self.name = method
        self.stats = dict(n_steps=0, n_rejected=0, nfe=0, replay_n_steps=0, replay_n_rejected=0, replay_nfe=0,
                          last_dt=None)
        self.func = _Counted(f, self.stats)
        self.func_replay = _Counted(f, self.stats, "replay_")
        self.h = None

    @classmethod
    def build(cls, f, method, t0, y0, *, rtol, atol, t_bound, atol_floor=None) -> "TorchdiffeqStepper":
        _no_floor("torchdiffeq", atol_floor)
        return cls(f, method, t0, y0, rtol, atol)

    def _odeint(self, y0, ts, first_step, replay=False):
        from torchdiffeq import odeint

        tt = torch.as_tensor(np.asarray(ts, dtype=np.float64), dtype=y0.dtype, device=y0.device)
        return odeint(self.func_replay if replay else self.func, y0, tt, rtol=self.rtol, atol=self.atol,
                      method=self.name, options=dict(first_step=first_step))

    def _step_impl(self, t_bound: float) -> tuple:
        if self.h is None:
            y0, f0 = self.y, self.func(self.t, self.y)
            scale = y0.abs() * self.rtol + self.atol

            def rms(v):
                return float(torch.linalg.vector_norm(v / scale)) / math.sqrt(v.numel())

            self.h = initial_step(rms(f0), rms(y0), lambda h0: rms(self.func(self.t, y0 + h0 * f0) - f0),
                                  TORCHDIFFEQ_ORDER[self.name], t_bound - self.t)
        hit = self.t + self.h >= t_bound - 1e-15 * abs(t_bound)
        t0 = self.t
        t1 = t_bound if hit else self.t + self.h
        h = t1 - t0
        y1 = self._odeint(self.y, [t0, t1], h)[1]
        if not bool(torch.isfinite(y1).all()):
            raise SolverFailure(f"torchdiffeq {self.name}: non-finite state at t = {t1:.6g}")
        self._yprev = self.y
        self.t, self.y = t1, y1
        self.h = 2.0 * self.stats["last_dt"]  # let the next call try a larger step
        return t0, t1, h

    def _dense_output_impl(self) -> TorchdiffeqInterp:
        t0, t1, h = self.last
        return TorchdiffeqInterp(self, t0, t1, h, self._yprev, self.y)

    def _replay_impl(self, t0, y0, t1, h) -> TorchdiffeqInterp:
        y1 = self._odeint(y0, [t0, t1], h, replay=True)[1]
        return TorchdiffeqInterp(self, t0, t1, h, y0, y1)


class ScipyInterp(Interpolant):
    """scipy's own dense output of one step, returning torch tensors."""

    def __init__(self, dense, y0, t1, y1, like):
        self.dense, self.y0, self.t1, self.y1, self.like = dense, y0, t1, y1, like
        self.t0 = float(dense.t_min)

    @property
    def nbytes(self) -> int:
        return 8 * self.y1.numel() * 8  # the polynomial coefficients: a few (P,) vectors

    def __call__(self, t: float) -> torch.Tensor:
        if t == self.t1:
            return self.y1
        return torch.from_numpy(self.dense(t)).to(dtype=self.like.dtype, device=self.like.device)


class ScipyStepper(Stepper):
    """scipy.integrate's OdeSolver classes stepped by hand (CPU only)."""

    def __init__(self, f, method: str, t0: float, y0: torch.Tensor, rtol: float, atol: float, t_bound: float):
        import scipy.integrate as si

        # scipy refuses rtol below 100 eps (2.2e-14) with a warning and raises it: do it here, silently
        StepController(rtol, atol)  # checked as given (a negative rtol must not be raised to the floor)
        super().__init__(t0, y0, StepController(max(rtol, SCIPY_RTOL_MIN), atol))
        self.name = method
        self.cls = getattr(si, method)
        self.replayable = method not in IMPLICIT  # multistep / Newton state cannot be rebuilt from (t0, y0, h)
        self.like = y0
        self.f = f
        self.stats = dict(n_steps=0, n_rejected=None, nfe=0, njev=0, nlu=0, nfe_replay=0)
        self.solver = self.cls(self._fun, float(t0), y0.cpu().numpy().astype(np.float64), float(t_bound),
                               rtol=self.rtol, atol=atol)
        self.t_bound = float(t_bound)

    @classmethod
    def build(cls, f, method, t0, y0, *, rtol, atol, t_bound, atol_floor=None) -> "ScipyStepper":
        _no_floor("scipy", atol_floor)
        return cls(f, method, t0, y0, rtol, atol, t_bound)

    def _fun(self, _t, y):
        return self.f(torch.from_numpy(y).to(dtype=self.like.dtype, device=self.like.device)).cpu().numpy()

    def _step_impl(self, t_bound: float) -> tuple:
        if t_bound != self.t_bound:
            raise ValueError(f"the scipy stepper was built for t_bound = {self.t_bound}, not {t_bound}")
        s = self.solver
        t0 = s.t
        msg = s.step()
        if s.status == "failed":
            raise SolverFailure(f"scipy {self.name} failed at t = {s.t:.6g}: {msg}")
        self.stats["n_steps"] += 1
        for k in ("nfev", "njev", "nlu"):
            self.stats["nfe" if k == "nfev" else k] = int(getattr(s, k, 0))
        self.t, self._yprev = float(s.t), self.y
        self.y = torch.from_numpy(s.y.copy()).to(dtype=self.like.dtype, device=self.like.device)
        return t0, self.t, self.t - t0

    def _dense_output_impl(self) -> ScipyInterp:
        return ScipyInterp(self.solver.dense_output(), self._yprev, self.t, self.y, self.like)

    def _replay_impl(self, t0, y0, t1, h) -> ScipyInterp:
        s = self.cls(self._fun, float(t0), y0.cpu().numpy().astype(np.float64), float(t1), rtol=self.rtol,
                     atol=self.atol, first_step=h)
        s.step()
        self.stats["nfe_replay"] += int(s.nfev)
        y1 = torch.from_numpy(s.y.copy()).to(dtype=self.like.dtype, device=self.like.device)
        return ScipyInterp(s.dense_output(), y0, float(s.t), y1, self.like)
