"""Phase times and the hallucination plateau (SPEC §3) from any loss curve.

Works on the exact flow (which also knows dL/dt exactly) and on trainer histories
(time in steps or in flow time). Times are first crossings of thresholds by the
interpolated curve, never values read off the grid:

- with the derivative dL/dt at the samples: cubic Hermite interpolation (4th order);
- without it: monotone piecewise-cubic (PCHIP) interpolation in log t.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.optimize import brentq


@dataclass(frozen=True)
class Plateau:
    """State of the run where |dL/d log t| is smallest between t1 and t2."""

    t: float
    loss: float
    relation_loss: float
    subject_loss: float
    hallucination_gap: float


@dataclass(frozen=True)
class Phases:
    """Phase times (None where not reached) and the plateau, with the thresholds used."""

    t1: float | None
    t2: float | None
    t3: float | None
    plateau: Plateau | None
    theta1: float
    theta2: float
    theta3: float

    def to_dict(self) -> dict:
        d = asdict(self)
        return d


def thresholds(log_A: float, H_A_given_R: float, eps_conv: float = 1e-2):
    """(theta1, theta2, theta3): the loss levels that end stages 1, 2 and 3."""
    return (0.5 * (log_A + H_A_given_R), 0.5 * H_A_given_R, eps_conv)


def hermite_crossing(t0, t1, L0, L1, d0, d1, theta) -> float:
    """Root in [t0, t1] of the cubic Hermite interpolant of (L, dL/dt) minus theta.

    Needs L0 > theta >= L1 (a sign change). Returns the first root.
    """
    h = t1 - t0

    def cubic(tau):
        s = (tau - t0) / h
        h00 = 2 * s**3 - 3 * s**2 + 1
        h10 = s**3 - 2 * s**2 + s
        h01 = -2 * s**3 + 3 * s**2
        h11 = s**3 - s**2
        return h00 * L0 + h10 * h * d0 + h01 * L1 + h11 * h * d1 - theta

    # first sign change on a fine sub-grid (the cubic may wiggle), then Brent
    grid = np.linspace(t0, t1, 65)
    vals = cubic(grid)
    k = int(np.argmax(vals <= 0))
    if k == 0:
        return float(t0)
    return float(brentq(cubic, grid[k - 1], grid[k], xtol=1e-14 * max(1.0, abs(t1)), rtol=1e-15))


def first_crossing(t, L, theta, dLdt=None) -> float | None:
    """First time the interpolated curve reaches ``L <= theta`` (None if never).

    t: (n,) increasing times; L: (n,) losses; dLdt: optional (n,) exact derivatives.
    """
    t = np.asarray(t, dtype=np.float64)
    L = np.asarray(L, dtype=np.float64)
    below = np.nonzero(L <= theta)[0]
    if below.size == 0:
        return None
    j = int(below[0])
    if j == 0:
        return float(t[0])
    i = j - 1
    if dLdt is not None:
        return hermite_crossing(t[i], t[j], L[i], L[j], dLdt[i], dLdt[j], theta)
    # PCHIP in log-time is monotone between samples; fall back to linear in t at t = 0
    if t[i] > 0:
        lo, hi = max(0, i - 2), min(len(t), j + 3)
        lo = max(lo, int(np.argmax(t > 0)))
        x = np.log(t[lo:hi])
        f = PchipInterpolator(x, L[lo:hi])
        return float(math.exp(brentq(lambda u: float(f(u)) - theta, x[i - lo], x[j - lo])))
    return float(t[i] + (t[j] - t[i]) * (L[i] - theta) / (L[i] - L[j]))


def plateau_index(t, L, t_lo, t_hi, dLdt=None) -> int | None:
    """Index of the sample in [t_lo, t_hi] where |dL/d log t| = t |dL/dt| is smallest."""
    t = np.asarray(t, dtype=np.float64)
    L = np.asarray(L, dtype=np.float64)
    if dLdt is None:
        pos = t > 0
        rate = np.full_like(L, np.inf)
        if pos.sum() >= 3:
            rate[pos] = np.abs(np.gradient(L[pos], np.log(t[pos])))
    else:
        rate = np.abs(t * np.asarray(dLdt, dtype=np.float64))
    inside = np.nonzero((t >= t_lo) & (t <= t_hi) & np.isfinite(rate))[0]
    if inside.size == 0:
        return None
    return int(inside[np.argmin(rate[inside])])


def detect_phases(t, loss, relation_loss, subject_loss, hallucination_gap, *, log_A: float,
                  H_A_given_R: float, eps_conv: float = 1e-2, dloss_dt=None) -> Phases:
    """Phase times t1, t2, t3 and the plateau of SPEC §3 from a sampled trajectory.

    All arrays have shape (n,); ``t`` increasing (flow time or steps). The plateau
    is the sample in [t1, t2] with the smallest |dL/d log t|; it needs t1 and t2.
    """
    th1, th2, th3 = thresholds(log_A, H_A_given_R, eps_conv)
    t1 = first_crossing(t, loss, th1, dloss_dt)
    t2 = first_crossing(t, loss, th2, dloss_dt)
    t3 = first_crossing(t, loss, th3, dloss_dt)
    plateau = None
    if t1 is not None and t2 is not None:
        k = plateau_index(t, loss, t1, t2, dloss_dt)
        if k is not None:
            plateau = Plateau(t=float(t[k]), loss=float(loss[k]), relation_loss=float(relation_loss[k]),
                              subject_loss=float(subject_loss[k]),
                              hallucination_gap=float(hallucination_gap[k]))
    return Phases(t1=t1, t2=t2, t3=t3, plateau=plateau, theta1=th1, theta2=th2, theta3=th3)
