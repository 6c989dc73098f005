"""ODE backends behind one small interface: solve y' = f(y) from y0 onto a time grid.

Both keep running statistics (accepted/rejected steps, function evaluations) across
calls, so a driver can integrate piece by piece and still report totals.
"""
from __future__ import annotations

import numpy as np
import torch

from models.errors import ConfigError

TORCHDIFFEQ_METHODS = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2")
SCIPY_METHODS = ("DOP853", "RK45", "RK23", "LSODA", "BDF", "Radau")
IMPLICIT = ("LSODA", "BDF", "Radau")  # may form a dense P x P Jacobian by finite differences
NATIVE_METHODS = ("dopri5",)
DEFAULT_METHOD = {"native": "dopri5", "torchdiffeq": "dopri5", "scipy": "DOP853"}
BACKENDS = tuple(DEFAULT_METHOD)


class _Counted(torch.nn.Module):
    """Wraps f(y) for torchdiffeq, counting evaluations and accepted/rejected steps."""

    def __init__(self, f, stats):
        super().__init__()
        self.f, self.stats = f, stats
        self.last_dt = None

    def forward(self, t, y):
        self.stats["nfe"] += 1
        return self.f(y)

    def callback_accept_step(self, t0, y0, dt):
        self.stats["n_steps"] += 1
        self.last_dt = float(dt)

    def callback_reject_step(self, t0, y0, dt):
        self.stats["n_rejected"] += 1


class TorchdiffeqBackend:
    """Adaptive Runge-Kutta methods of torchdiffeq (float64 by default)."""

    name = "torchdiffeq"

    def __init__(self, f, method: str, rtol: float, atol: float):
        self.method, self.rtol, self.atol = method, rtol, atol
        self.stats = dict(n_steps=0, n_rejected=0, nfe=0, n_calls=0)
        self.func = _Counted(f, self.stats)

    def solve(self, y0: torch.Tensor, t: np.ndarray, *, first_step: float | None = None) -> torch.Tensor:
        """States (len(t), P) at times t (t[0] is the start, y0 its state)."""
        from torchdiffeq import odeint

        self.stats["n_calls"] += 1
        tt = torch.as_tensor(np.asarray(t, dtype=np.float64), dtype=y0.dtype, device=y0.device)
        opts = {}
        h = first_step if first_step is not None else self.func.last_dt
        if h is not None:
            opts["first_step"] = min(h, float(t[-1] - t[0]))
        return odeint(self.func, y0, tt, rtol=self.rtol, atol=self.atol, method=self.method, options=opts)


class ScipyBackend:
    """scipy.integrate's OdeSolver classes, stepped by hand to count steps and use dense output."""

    name = "scipy"

    def __init__(self, f, method: str, rtol: float, atol: float):
        import scipy.integrate as si

        self.cls = getattr(si, method)
        self.method, self.rtol, self.atol = method, rtol, atol
        self.f = f
        self.stats = dict(n_steps=0, n_rejected=None, nfe=0, njev=0, nlu=0, n_calls=0)
        self.last_h = None

    def solve(self, y0: torch.Tensor, t: np.ndarray, *, first_step: float | None = None) -> torch.Tensor:
        dtype, device = y0.dtype, y0.device

        def fun(_t, y):
            return self.f(torch.from_numpy(y).to(device=device, dtype=dtype)).cpu().numpy()

        self.stats["n_calls"] += 1
        t = np.asarray(t, dtype=np.float64)
        out = np.empty((len(t), y0.numel()))
        out[0] = y0.cpu().numpy()
        h = first_step if first_step is not None else self.last_h
        kw = {} if h is None or self.method in ("LSODA",) else {"first_step": min(h, t[-1] - t[0])}
        solver = self.cls(fun, t[0], out[0].copy(), t[-1], rtol=self.rtol, atol=self.atol, **kw)
        k = 1
        while k < len(t):
            msg = solver.step()
            if solver.status == "failed":
                raise RuntimeError(f"scipy {self.method} failed at t = {solver.t:.6g}: {msg}")
            self.stats["n_steps"] += 1
            if solver.step_size is not None and solver.t < t[-1]:
                self.last_h = float(solver.step_size)
            dense = None
            while k < len(t) and t[k] <= solver.t:
                if t[k] == solver.t:
                    out[k] = solver.y
                else:
                    dense = dense or solver.dense_output()
                    out[k] = dense(t[k])
                k += 1
        self.stats["nfe"] += int(solver.nfev)
        self.stats["njev"] += int(getattr(solver, "njev", 0))
        self.stats["nlu"] += int(getattr(solver, "nlu", 0))
        return torch.from_numpy(out).to(device=device, dtype=dtype)


class NativeBackend:
    """The stage-major DOPRI5 of :mod:`dynamics.dopri` (fast for states of ~1e5 entries and more)."""

    name = "native"

    def __init__(self, f, method: str, rtol: float, atol: float):
        from .dopri import Dopri5

        self.method, self.rtol, self.atol = method, rtol, atol
        self.solver = Dopri5(lambda y, out: f(y, out=out), rtol, atol)
        self.stats = self.solver.stats
        self.stats["n_calls"] = 0

    def solve(self, y0: torch.Tensor, t: np.ndarray, *, first_step: float | None = None) -> torch.Tensor:
        self.stats["n_calls"] += 1
        return self.solver.solve(y0, t)


def make_backend(backend: str, method: str, f, *, rtol: float, atol: float):
    """Backend object for ``backend``/``method``; ConfigError on a bad combination."""
    if backend == "torchdiffeq":
        if method not in TORCHDIFFEQ_METHODS:
            raise ConfigError(f"method = {method!r} is not available with backend 'torchdiffeq'; "
                              f"choose one of: {', '.join(TORCHDIFFEQ_METHODS)}")
        return TorchdiffeqBackend(f, method, rtol, atol)
    if backend == "scipy":
        if method not in SCIPY_METHODS:
            raise ConfigError(f"method = {method!r} is not available with backend 'scipy'; "
                              f"choose one of: {', '.join(SCIPY_METHODS)}")
        return ScipyBackend(f, method, rtol, atol)
    if backend == "native":
        if method not in NATIVE_METHODS:
            raise ConfigError(f"method = {method!r} is not available with backend 'native'; "
                              f"choose one of: {', '.join(NATIVE_METHODS)}")
        return NativeBackend(f, method, rtol, atol)
    raise ConfigError(f"backend = {backend!r} is unknown; choose one of: {', '.join(BACKENDS)}")
