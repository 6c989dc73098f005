"""The solver backends, each a stepper for :mod:`dynamics.ode.engine` (protocol in :mod:`dynamics.ode.base`).

- ``native``: the stage-major DOPRI5 of :mod:`dynamics.ode.dopri5` (the default; fastest here), or ``rock4``, the
  stabilized explicit ROCK4 of :mod:`dynamics.ode.rock4` (for stiff plateaus of large states);
- ``torchdiffeq``: torchdiffeq's adaptive Runge-Kutta methods, an independent implementation;
- ``scipy``: scipy.integrate's OdeSolver classes (DOP853, RK45, ..., and the implicit LSODA/BDF/Radau
  for small problems), stepped one accepted step at a time with their own dense output.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from common.errors import ConfigError

from dynamics.choices import (BACKENDS, DEFAULT_METHOD, IMPLICIT, METHODS, NATIVE_METHODS,  # noqa: F401 (re-exported)
                      SCIPY_METHODS, TORCHDIFFEQ_METHODS)
from dynamics.ode.base import SolverFailure, initial_step

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


class TorchdiffeqInterp:
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


class TorchdiffeqStepper:
    """torchdiffeq's adaptive methods, one engine step = one ``odeint`` call over about two internal steps."""

    replayable = True

    def __init__(self, f, method: str, t0: float, y0: torch.Tensor, rtol: float, atol: float):
        self.name, self.rtol, self.atol = method, rtol, atol
        self.stats = dict(n_steps=0, n_rejected=0, nfe=0, replay_n_steps=0, replay_n_rejected=0, replay_nfe=0,
                          last_dt=None)
        self.func = _Counted(f, self.stats)
        self.func_replay = _Counted(f, self.stats, "replay_")
        self.t, self.y = float(t0), y0.clone()
        self.h = None
        self._last = None

    def _odeint(self, y0, ts, first_step, replay=False):
        from torchdiffeq import odeint

        tt = torch.as_tensor(np.asarray(ts, dtype=np.float64), dtype=y0.dtype, device=y0.device)
        return odeint(self.func_replay if replay else self.func, y0, tt, rtol=self.rtol, atol=self.atol,
                      method=self.name, options=dict(first_step=first_step))

    def step(self, t_bound: float) -> tuple:
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
        self._last = (t0, t1, h, self.y)
        self.t, self.y = t1, y1
        self.h = 2.0 * self.stats["last_dt"]  # let the next call try a larger step
        return t0, t1, h

    def interpolant(self) -> TorchdiffeqInterp:
        t0, t1, h, y0 = self._last
        return TorchdiffeqInterp(self, t0, t1, h, y0, self.y)

    def replay(self, t0, y0, t1, h) -> TorchdiffeqInterp:
        y1 = self._odeint(y0, [t0, t1], h, replay=True)[1]
        return TorchdiffeqInterp(self, t0, t1, h, y0, y1)


class ScipyInterp:
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


class ScipyStepper:
    """scipy.integrate's OdeSolver classes stepped by hand (CPU only)."""

    def __init__(self, f, method: str, t0: float, y0: torch.Tensor, rtol: float, atol: float, t_bound: float):
        import scipy.integrate as si

        # scipy refuses rtol below 100 eps (2.2e-14) with a warning and raises it: do it here, silently
        self.name, self.rtol, self.atol = method, max(rtol, SCIPY_RTOL_MIN), atol
        self.cls = getattr(si, method)
        self.replayable = method not in IMPLICIT  # multistep / Newton state cannot be rebuilt from (t0, y0, h)
        self.like = y0
        self.f = f
        self.stats = dict(n_steps=0, n_rejected=None, nfe=0, njev=0, nlu=0, nfe_replay=0)
        self.solver = self.cls(self._fun, float(t0), y0.cpu().numpy().astype(np.float64), float(t_bound),
                               rtol=self.rtol, atol=atol)
        self.t_bound = float(t_bound)
        self.t, self.y = float(t0), y0.clone()

    def _fun(self, _t, y):
        return self.f(torch.from_numpy(y).to(dtype=self.like.dtype, device=self.like.device)).cpu().numpy()

    def step(self, t_bound: float) -> tuple:
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

    def interpolant(self) -> ScipyInterp:
        return ScipyInterp(self.solver.dense_output(), self._yprev, self.t, self.y, self.like)

    def replay(self, t0, y0, t1, h) -> ScipyInterp:
        s = self.cls(self._fun, float(t0), y0.cpu().numpy().astype(np.float64), float(t1), rtol=self.rtol,
                     atol=self.atol, first_step=h)
        s.step()
        self.stats["nfe_replay"] += int(s.nfev)
        y1 = torch.from_numpy(s.y.copy()).to(dtype=self.like.dtype, device=self.like.device)
        return ScipyInterp(s.dense_output(), y0, float(s.t), y1, self.like)


def check_method(backend: str, method: str) -> None:
    """ConfigError unless ``method`` belongs to ``backend``."""
    if backend not in METHODS:
        raise ConfigError(f"backend = {backend!r} is unknown; choose one of: {', '.join(BACKENDS)}")
    if method not in METHODS[backend]:
        raise ConfigError(f"method = {method!r} is not available with backend {backend!r}; "
                          f"choose one of: {', '.join(METHODS[backend])}")


def make_stepper(backend: str, method: str, f, t0: float, y0: torch.Tensor, *, rtol: float, atol: float,
                 t_bound: float):
    """A stepper of ``backend``/``method`` for y' = f(y) from (t0, y0).

    f(y, out=None) -> (P,) tensor (the native stepper writes into ``out``). ConfigError on a bad combination.
    """
    check_method(backend, method)
    if backend == "native":
        if method == "rock4":
            from dynamics.ode.rock4 import Rock4Stepper

            return Rock4Stepper(lambda y, out: f(y, out=out), t0, y0, rtol, atol)
        from dynamics.ode.dopri5 import Dopri5Stepper

        return Dopri5Stepper(lambda y, out: f(y, out=out), t0, y0, rtol, atol)
    if backend == "torchdiffeq":
        return TorchdiffeqStepper(f, method, t0, y0, rtol, atol)
    return ScipyStepper(f, method, t0, y0, rtol, atol, t_bound)
