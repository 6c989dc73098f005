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
    a, b = float(grid[k - 1]), float(grid[k])
    # the scalar evaluation may round differently from the array one: where the root sits within rounding of
    # a grid point the two can disagree in sign, and that grid point is the root
    if cubic(a) <= 0:
        return a
    if cubic(b) > 0:
        return b
    return float(brentq(cubic, a, b, xtol=1e-14 * max(1.0, abs(t1)), rtol=1e-15))


def locate_first_crossing(t, L, theta, refine) -> float | None:
    """First time a sampled curve reaches ``L <= theta``: None if no sample does, ``t[0]`` if the first one does,
    else ``refine(i, j)``, the crossing inside the bracket of samples i = j - 1 (above theta) and j (the first one
    at or below it).

    t: (n,) increasing times; L: (n,) values (NaN counts as above theta); refine: (i, j) -> the crossing time.
    """
    below = np.nonzero(np.asarray(L) <= theta)[0]
    if below.size == 0:
        return None
    j = int(below[0])
    if j == 0:
        return float(t[0])
    return refine(j - 1, j)


def first_crossing(t, L, theta, dLdt=None) -> float | None:
    """First time the interpolated curve reaches ``L <= theta`` (None if never).

    t: (n,) increasing times; L: (n,) losses; dLdt: optional (n,) exact derivatives.
    """
    t = np.asarray(t, dtype=np.float64)
    L = np.asarray(L, dtype=np.float64)
    return locate_first_crossing(t, L, theta, lambda i, j: _interpolated_crossing(t, L, theta, dLdt, i, j))


def _interpolated_crossing(t, L, theta, dLdt, i: int, j: int) -> float:
    """The crossing of theta between samples i and j = i + 1 of the interpolated curve (see first_crossing)."""
    if dLdt is not None:
        return hermite_crossing(t[i], t[j], L[i], L[j], dLdt[i], dLdt[j], theta)
    # PCHIP in log-time is monotone between samples; fall back to linear in t at t = 0
    if t[i] > 0:
        lo, hi = max(0, i - 2), min(len(t), j + 3)
        lo = max(lo, int(np.argmax(t > 0)))
        x = np.log(t[lo:hi])
        f = PchipInterpolator(x, L[lo:hi])
        a, b = x[i - lo], x[j - lo]
        # the interpolant reproduces the samples only to rounding: a sample within rounding of theta (the last
        # row of a run stopped at its target sits exactly on it) is the crossing
        if float(f(a)) - theta <= 0:
            return float(t[i])
        if float(f(b)) - theta > 0:
            return float(t[j])
        return float(math.exp(brentq(lambda u: float(f(u)) - theta, a, b)))
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


# ----------------------------------------------------------------------------- exact phases of the flow
def _rate_and_curvature(run, t: float) -> tuple:
    """(dL/dt, d/dt (t dL/dt)) at flow time t on the run's dense output.

    dL/dt = -sum_z count_z |F_z|^2 with F the flow's right-hand side (per real token, count_z tokens per
    compressed row); d2L/dt2 = -2 sum count F . DF[F], the directional derivative DF[F] by a central
    difference of the exact right-hand side with step eps = 6e-6 |y| / |F| (truncation and rounding
    errors both ~1e-11 relative).
    """
    obj = run.objective
    lay = obj.layout
    y = run.state_at(t)
    w = lay.pack(obj.count[:, None].expand(lay.C, lay.A), obj.count)  # (P,) tokens per compressed entry
    F = obj.flow_rhs(y)
    L1 = -float((w * F * F).sum())
    nF = float(F.norm())
    if nF == 0.0:
        return L1, L1
    eps = 6e-6 * max(float(y.norm()), 1e-300) / nF
    DF = (obj.flow_rhs(y + eps * F) - obj.flow_rhs(y - eps * F)) / (2 * eps)
    L2 = -2.0 * float((w * F * DF).sum())
    return L1, L1 + t * L2


def flow_plateau(run, t1: float, t2: float) -> Plateau | None:
    """The plateau of SPEC §3 on an exact flow: the minimiser of |t dL/dt| over [t1, t2], exactly.

    |t dL/dt| = -t dL/dt is smallest where d/dt (t dL/dt) = 0: bracketed by the saved sample with the
    smallest |t dL/dt| and its neighbours, then located by Brent's method on the dense interpolant
    (a root of the derivative is well conditioned where the minimum itself is flat). At an end of
    [t1, t2] when the minimum is there.
    """
    tr = run.trajectory
    t = tr["t"]
    with run.numerics():
        k = plateau_index(t, tr["loss"], t1, t2, tr["dloss_dt"])
        if k is None:  # no saved sample inside: the bracket is [t1, t2] itself
            lo, hi = t1, t2
        else:
            lo, hi = max(t1, float(t[max(k - 1, 0)])), min(t2, float(t[min(k + 1, len(t) - 1)]))

        def slope(s):
            return _rate_and_curvature(run, s)[1]

        d_lo, d_hi = slope(lo), slope(hi)
        if d_lo > 0 > d_hi:  # -t L' decreases, then increases: its minimum is inside
            tp = float(brentq(slope, lo, hi, xtol=4e-16 * hi, rtol=1e-15, maxiter=200))
        else:  # monotone on the bracket: the smaller end
            rates = {s: abs(s * _rate_and_curvature(run, s)[0]) for s in (lo, hi)}
            tp = min(rates, key=rates.get)
        m = run.metrics_at(tp)
    return Plateau(t=tp, loss=m["loss"], relation_loss=m["relation_loss"], subject_loss=m["subject_loss"],
                   hallucination_gap=m["hallucination_gap"])


def batched_plateau(result: dict) -> Plateau | None:
    """The plateau of one run_flows_batched(..., plateau=True) result: :func:`flow_plateau` on its
    ``plateau_window``, which is taken out of ``result`` (its interpolants are freed); None where t1 or t2 was not
    reached or t2 <= t1 (as :func:`flow_phases`)."""
    window = result.pop("plateau_window", None)
    t1, t2 = result.get("t1"), result.get("t2")
    if window is None or t1 is None or t2 is None or not t2 > t1:
        return None
    return flow_plateau(window, t1, t2)


def flow_phases(run, *, log_A: float, H_A_given_R: float, eps_conv: float = 1e-2) -> Phases:
    """Phases of an exact flow run (dynamics.FlowRun) integrated with the loss levels ``thresholds(...)``.

    t1, t2, t3 are the engine's event times (first crossings located on the dense interpolant); the
    plateau is :func:`flow_plateau`.
    """
    th = thresholds(log_A, H_A_given_R, eps_conv)
    missing = [x for x in th if x not in run.crossings]
    if missing:
        raise ValueError(f"the run was not integrated with the loss levels {missing}; pass levels=thresholds(...)")
    t1, t2, t3 = (run.crossings[x] for x in th)
    plateau = flow_plateau(run, t1, t2) if t1 is not None and t2 is not None and t2 > t1 else None
    return Phases(t1=t1, t2=t2, t3=t3, plateau=plateau, theta1=th[0], theta2=th[1], theta3=th[2])
