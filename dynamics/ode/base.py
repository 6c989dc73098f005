"""What every stepper of :mod:`dynamics.ode.engine` offers, and how a solve can fail.

A *stepper* advances y' = f(y) one accepted step at a time:

- ``t`` (float) and ``y`` ((P,) tensor, read-only for callers): the current time and state;
- ``step(t_bound) -> (t0, t1, h)``: one accepted step, never past ``t_bound`` (it lands on it exactly);
- ``interpolant() -> callable``: dense output of the last step, ``interp(t) -> (P,)`` for t in [t0, t1],
  from the method's own continuous extension; ``interp.nbytes`` is its memory;
- ``replay(t0, y0, t1, h) -> interp``: the same step recomputed from its start (``replayable``: whether
  the result is the same as the first time, which lets the engine drop old interpolants and rebuild them);
- ``stats``: counters (``n_steps``, ``n_rejected``, ``nfe``, ...).
"""
from __future__ import annotations

import math

import torch


class SolverFailure(RuntimeError):
    """The solver cannot go on (the message says where and why)."""


class StepSizeCollapse(SolverFailure):
    """The step size underflowed: the problem is too stiff or the tolerance is unattainable."""


def initial_step(f0_norm: float, y0_norm: float, f1_diff_norm, order: int, span: float) -> float:
    """Hairer, Norsett & Wanner's starting step (Solving ODEs I, §II.4), from scaled RMS norms.

    f0_norm = |f(y0)|, y0_norm = |y0| (both divided by atol + rtol |y0|); f1_diff_norm(h0) returns
    |f(y0 + h0 f0) - f0| in the same norm (one extra evaluation of f).
    """
    h0 = 1e-6 if y0_norm < 1e-5 or f0_norm < 1e-5 else 0.01 * y0_norm / f0_norm
    h0 = min(h0, span)
    d2 = f1_diff_norm(h0) / h0
    h1 = max(1e-6, h0 * 1e-3) if max(f0_norm, d2) <= 1e-15 else (0.01 / max(f0_norm, d2)) ** (1 / order)
    return min(100 * h0, h1, span)


def scaled_rms(err: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor, rtol: float, atol, scale: torch.Tensor,
               scratch: torch.Tensor) -> float:
    """RMS of err / (atol + rtol max(|y0|, |y1|)) (Hairer, Norsett & Wanner, §II.4); atol a float or a (P,)
    tensor. Overwrites err, and uses scale and scratch ((P,) work arrays) to avoid allocations."""
    torch.maximum(torch.abs(y0, out=scale), torch.abs(y1, out=scratch), out=scale)
    scale.mul_(rtol).add_(atol)
    return float(torch.linalg.vector_norm(err.div_(scale)) / math.sqrt(err.numel()))


def starting_step(f, y0: torch.Tensor, f0: torch.Tensor, rtol: float, atol, order: int, span: float) -> float:
    """:func:`initial_step` for y' = f(y) from (y0, f0 = f(y0)), norms scaled by atol + rtol |y0|;
    f(y, out) is called once."""
    scale = y0.abs() * rtol + atol

    def rms(v):
        return float(torch.linalg.vector_norm(v / scale)) / math.sqrt(v.numel())

    return initial_step(rms(f0), rms(y0), lambda h0: rms(f(y0 + h0 * f0, torch.empty_like(y0)) - f0), order, span)
