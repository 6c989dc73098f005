"""Predictions from the reduced flow: escape rates, plateaus, the hallucination condition and the
phase times t1, t2, t3, vectorised over batches of configurations.

The reduction (:mod:`analysis.theory.reduction`) leaves two independent scalar equations, one per "mode"
(subject: margin ``a = K_s (w1 - w0)`` with ``n = D`` choices; relation: margin ``b`` with
``n = R`` choices)::

    dm/dt = lam * n * sqrt(A0^2 + m^2) / (e^m + n - 1),      L_mode(m) = log(1 + (n - 1) e^{-m})

with ``lam = 2 sqrt(c) / P`` the escape rate of the margin, ``(n, P, c) = (D, S R, R (D-1)/D)`` for
the subject mode and ``(R, R D, D (R-1)/R)`` for the relation mode, and ``A0 = Qhat / (2 sqrt(c))``,
``Qhat = K^2 - c (w1 - w0)^2`` the conserved hyperbolic invariant (``alpha^2`` for ``balanced`` and
``uniform`` initializations, whose margins start at 0). The loss is ``L = L_S(a) + L_R(b)``.

Each mode is solved by quadrature: the time to reach margin m is (exactly)::

    tau(m) = (1/lam) [ asinh(m / A0) + I(m) / n ],   I(m) = int_0^m (e^x - 1) / sqrt(A0^2 + x^2) dx
    I(m)  = Ein(m) + (sqrt(A0^2 + m^2) - A0 - m) + R2(m),   Ein(m) = int_0^m (e^x - 1)/x dx = Ei(m) - gamma - log m

with ``R2 = O(A0^2 e^m / m^3)`` computed in closed form when ``A0 > 1e-6`` (:func:`_r2`: a term-by-term
integrated Taylor series below max(1, 4 A0) and an expansion in (A0/x)^2 with exponential-integral recurrences
above; exact to a few ulps of I(m)); below, |R2| < 5e-11 for the margins up to t3, a relative error below 1e-11
in t, and it is dropped.
Margins at a given time come from inverting tau (safeguarded
Newton), phase times from solving ``L(t) = theta`` (safeguarded Newton in log t, each step needing
the two inversions). Both Newton iterations evaluate only the entries not yet converged; the inversion starts
from a second-order Taylor predictor of log m in log t (from its last solution) and stops once Newton's own
error estimate |f''/(2 f')| step^2 is 100 times below the tolerance; tau(M_CAP) is computed once per mode.
Everything is float64 and converged to ~1e-12 relative; the error is that
of double precision, not of an ODE solver.

Any scale of initialization. ``A0 ~ alpha^2`` underflows for alpha below ~1e-154 (and overflows above
~1e154), so every quadrature works with ``log A0 = 2 log alpha - log(2 sqrt c)`` and the margins with
``log m``: ``asinh(m / A0) = log 2 + log m - log A0`` once ``m / A0 > 1e8``. Nothing squares alpha or A0.
For A0 >= 1 (alpha >~ 1.7) Ein(m) + ... + R2 would cancel to a small I(m), which is then integrated
directly (:func:`_i_direct`).
Supported: 0 < alpha <= ALPHA_MAX (above it the phase times fall below ~1e-200 and the logits of the full
model overflow anyway); :func:`phase_times` raises ValueError outside, and if a result is not finite.

Leading order (``alpha -> 0``): ``tau(m) = [log(1/alpha^2) + log(4 sqrt(c) m) + Ein(m)/n] / lam + O(alpha^2)``,
so each phase time is ``log(1/alpha^2) / lam`` of the mode that crosses it, plus an O(1) term.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import expi

from models.linear import QUADRATURE_ALPHA

EULER_GAMMA = 0.5772156649015329
M_CAP = 60.0  # largest margin tracked: L_mode = (n-1) e^{-60} is below any loss of interest
_DIRECT_MIN_A0 = 1.0  # from here on I(m) is integrated directly (see _i_direct)
_R2_MIN_A0 = 1e-6  # below this |R2| <~ 50 A0^2 = 5e-11 for margins up to 12 (< 1e-11 relative in t): dropped
_GL12 = np.polynomial.legendre.leggauss(12)
_GL24 = np.polynomial.legendre.leggauss(24)
_LOG2 = math.log(2.0)
_ASINH_LOG = 18.5  # asinh(x) = log(2x) + 1/(4x^2) + ...: beyond x = e^18.5 ~ 1e8 the correction is < 3e-17
ALPHA_MAX = QUADRATURE_ALPHA.maximum  # old name of the largest scale the quadratures support: analysis.derive uses it


# ----------------------------------------------------------------------------- closed forms
def escape_rates(S, R, D) -> dict:
    """Closed-form growth rates at the origin (1/time), from the lambdified sympy derivation.

    ``subject``, ``relation``: rates of the margins (the logit gaps), twice the eigenvalues
    ``subject_eigen`` = sqrt((D-1)/(R D)) / S and ``relation_eigen`` = sqrt((R-1)/(R D)) / R of the
    linearized class flow (a margin is the product of two factors that each grow at the eigenvalue).
    """
    from analysis.theory.reduction import rates_numpy

    f = rates_numpy()
    S, R, D = (np.asarray(x, dtype=np.float64) for x in (S, R, D))
    return {name: np.asarray(f[name](S, R, D), dtype=np.float64) for name in f}


def hallucination_stage_exists(S, R, D):
    """True where the relation mode escapes first: S^2 (R-1) > R^2 (D-1) (lambda_R > lambda_S).

    Then the loss sits on the hallucination plateau log D (relation learned, subject not); otherwise the
    subject mode escapes first and the intermediate plateau is log R (each subject's R answers are
    known but not which relation asks for which).
    """
    S, R, D = (np.asarray(x, dtype=np.float64) for x in (S, R, D))
    return S * S * (R - 1) > R * R * (D - 1)


def plateau_levels(S, R, D) -> dict:
    """Loss levels: initial log(RD), hallucination log D, subject-first log R, and the one that appears."""
    S, R, D = (np.asarray(x, dtype=np.float64) for x in (S, R, D))
    h = hallucination_stage_exists(S, R, D)
    return dict(initial=np.log(R * D), hallucination=np.log(D), subject_first=np.log(R),
                intermediate=np.where(h, np.log(D), np.log(R)))


class Modes:
    """Parameters of the two modes for a batch of configurations (arrays of shape (B,)).

    alpha: initialization scale (``balanced`` K = alpha, or ``uniform`` every entry alpha: both give
    Qhat = alpha^2 and zero initial margins).
    """

    def __init__(self, S, R, D, alpha):
        S, R, D, alpha = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (S, R, D, alpha)))
        QUADRATURE_ALPHA.check(alpha)
        self.S, self.R, self.D, self.alpha = S, R, D, alpha
        self.log_alpha = np.log(alpha)
        self.n = {"subject": D, "relation": R}
        c = {"subject": R * (D - 1) / D, "relation": D * (R - 1) / R}
        P = {"subject": S * R, "relation": R * D}
        self.c = c
        self.lam = {m: 2 * np.sqrt(c[m]) / P[m] for m in c}
        with np.errstate(divide="ignore", over="ignore", under="ignore"):
            # log A0 = log(alpha^2 / (2 sqrt c)) without forming alpha^2 (which underflows below alpha ~ 1e-154);
            # +inf where the mode is absent (n = 1, c = 0). A0 itself may underflow to 0: only log A0 is used.
            self.log_A0 = {m: 2 * self.log_alpha - np.log(2 * np.sqrt(c[m])) for m in c}
            self.A0 = {m: np.exp(self.log_A0[m]) for m in c}
        self.active = {m: self.n[m] > 1 for m in c}

    @property
    def size(self):
        return self.S.size


# ----------------------------------------------------------------------------- quadrature
def ein(m):
    """Ein(m) = int_0^m (e^x - 1)/x dx for m >= 0 (series below 0.5 to avoid cancellation)."""
    return _ein_ei(m)[0]


def _ein_ei(m):
    """(Ein(m), Ei(m)) for m >= 0; Ei(m) is only meaningful where m >= 0.5 (1 elsewhere)."""
    m = np.asarray(m, dtype=np.float64)
    small = m < 0.5
    ms = np.where(small, m, 0.0)
    series = np.zeros_like(m)
    term = np.ones_like(m)
    if small.any():
        for j in range(1, 20):  # sum m^j / (j * j!)
            term = term * ms / j
            series = series + term / j
    with np.errstate(divide="ignore", invalid="ignore"):
        mb = np.where(small, 1.0, m)
        ei = expi(mb)
        big = ei - EULER_GAMMA - np.log(mb)
    return np.where(small, series, big), ei


_EI1 = float(expi(1.0))
_BINOM = [math.comb(2 * k, k) * (-0.25) ** k for k in range(64)]  # binom(-1/2, k): 1/sqrt(1+u) = sum b_k u^k
_FACT = [float(math.factorial(j)) for j in range(120)]


def _r2(m, A0, ei_m=None):
    """R2(m) = int_0^m (e^x - 1 - x) (1/sqrt(A0^2 + x^2) - 1/x) dx, in closed form up to float64 rounding.

    Split at X = max(1, 4 A0) (``ei_m``: Ei(m) when the caller has it; m, A0: (B,), A0 < 1):

    * ``[0, x0]``, x0 = min(m, X): the Taylor series e^x - 1 - x = sum_{j>=2} x^j / j! integrated term by term,
      J_j = int_0^x0 x^j (1/h - 1/x) dx (h = sqrt(A0^2 + x^2)) from J_2, J_3 in closed form and the exact
      recurrence j J_j = x0^{j-1} (h - x0) - (j-1)/(j-2) A0^2 x0^{j-2} - (j-1) A0^2 J_{j-2} (integration by
      parts). Every J_j < 0 (no cancellation in the sum); the recurrence is stable for x0 > 2 A0 (the homogeneous
      solution grows by (A0/x0)^2 <= 1/4 per step relative to the particular one); truncated where the remaining
      terms, bounded by sum x0^j / (j j!), are below 1e-18 x0 <= 1e-18 Ein(x0).
      For m <= 2 A0 instead 24-node Gauss-Legendre on [0, m]: the integrand is entire but for the poles +-i A0,
      whose Bernstein ellipse parameter is >= 2.89 there, so the error is below 2.89^-48 ~ 1e-22 relative.
    * ``[X, m]`` (m > X): 1/h - 1/x = sum_{k>=1} b_k A0^{2k} x^{-2k-1} (b_k = binom(-1/2, k), |b_k| <= 1/2),
      so the piece is sum_k b_k A0^{2k} [G_{2k+1} - int_X^m (x^{-2k-1} + x^{-2k}) dx] with
      G_n = int_X^m e^x x^{-n} dx from G_1 = Ei(m) - Ei(X) and the upward recurrence
      G_n = [e^X X^{1-n} - e^m m^{1-n} + G_{n-1}] / (n - 1) (errors divided by n - 1: absolute error ~ eps e^m/m,
      i.e. ~ eps I(m)). Truncated after K terms with (A0/X)^{2K+2} <= 1e-17 (A0/X <= 1/4): the tail is below
      (A0/X)^{2K+2} / (1 - (A0/X)^2) Ein(m) ~ 1e-17 I(m).

    So R2 is exact to a few ulps of I(m), the quantity it is added to (checked against 40-digit mpmath quadrature
    in tests/analysis/theory/test_predict_speed_exact.py), at the cost of ~25 vector operations.
    """
    out = np.zeros_like(m)
    sel = (A0 > _R2_MIN_A0) & (m > 1e-150) & np.isfinite(A0)  # below 1e-150 R2 = O(m^2) is 0 in float64
    if not sel.any():
        return out
    idx = np.flatnonzero(sel)
    mm, aa = m[idx].astype(np.float64), A0[idx].astype(np.float64)
    res = np.empty_like(mm)
    gl = mm <= 2.0 * aa
    if gl.any():  # tiny margins: the recurrence below would be unstable, Gauss-Legendre is exact
        ms, As = mm[gl], aa[gl][:, None]
        xg, wg = _GL24
        x = 0.5 * ms[:, None] * (xg[None] + 1.0)
        h = np.hypot(As, x)
        g = (np.expm1(x) - x) * (-(As / h) * (As / (x * (x + h))))
        res[gl] = 0.5 * ms * (g @ wg)
    ser = ~gl
    if ser.any():
        ms, As = mm[ser], aa[ser]
        X = np.maximum(1.0, 4.0 * As)
        x0 = np.minimum(ms, X)
        A2 = As * As
        h = np.hypot(As, x0)
        r = x0 / (h + x0)
        # t_j = J_j / (j! A0^2): t_j = P_j (r - (j-1)/(j-2)) / j - A0^2 t_{j-2} / j^2 with P_j = x0^{j-2} / j!
        t2 = 0.25 * (r - np.arcsinh(x0 / As))
        t3 = ((h * h + h * x0 + x0 * x0) / (3.0 * (h + x0)) - h + 2.0 * As / 3.0) / 6.0
        tot = t2 + t3
        xmax = float(x0.max())
        N = 3
        while N < 110 and xmax ** N / ((N + 1) * _FACT[N + 1]) > 1e-18:
            N += 1
        P = x0 / 6.0  # P_3
        for j in range(4, N + 2):
            P = P * (x0 / j)
            t = P * ((r - (j - 1) / (j - 2)) / j) - A2 * t2 * (1.0 / (j * j))
            tot = tot + t
            t2, t3 = t3, t
        low = A2 * tot
        up = ms > X
        if up.any():
            mu, Au, Xu = ms[up], As[up], X[up]
            q = float(np.max((Au / Xu) ** 2))
            K = max(1, int(math.ceil(math.log(1e-17) / math.log(q))) - 1) if q > 0 else 1
            ei = expi(mu) if ei_m is None else ei_m[idx][ser][up]
            one = Xu == 1.0
            eiX = np.full_like(mu, _EI1) if one.all() else np.where(one, _EI1, expi(Xu))
            eX = np.full_like(mu, math.e) if one.all() else np.exp(Xu)
            G = ei - eiX  # G_1
            em = np.exp(mu)
            im, iX = 1.0 / mu, 1.0 / Xu
            pm, pX = em, eX  # e^m m^{1-n}, e^X X^{1-n}
            qm, qX = np.ones_like(mu), np.ones_like(mu)  # m^{1-n}, X^{1-n}
            A2u = Au * Au
            Ak = np.ones_like(mu)
            s = np.zeros_like(mu)
            for n in range(2, 2 * K + 2):
                pm, pX, qm, qX = pm * im, pX * iX, qm * im, qX * iX
                G = (pX - pm + G) / (n - 1)
                if n % 2 == 1:  # n = 2k + 1: subtract int_X^m (x^{-2k-1} + x^{-2k}) dx
                    k = (n - 1) // 2
                    Ak = Ak * A2u
                    powers = (qX - qm) / (2 * k) + (qX * Xu - qm * mu) / (2 * k - 1)
                    s = s + _BINOM[k] * Ak * (G - powers)
            low[up] += s
        res[ser] = low
    out[idx] = res
    return out


def asinh_ratio(log_m, log_A0):
    """asinh(m / A0) from log m and log A0 (either of m, A0 may be outside the float64 range); 0 at m = 0."""
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.asarray(log_m, dtype=np.float64) - log_A0  # log(m / A0); NaN only for m = A0 = 0
        out = np.where(d > _ASINH_LOG, _LOG2 + d, np.arcsinh(np.exp(np.minimum(d, _ASINH_LOG))))
    return np.where(np.isneginf(log_m), 0.0, out)


def tau(m, lam, n, A0, *, log_m=None, log_A0=None):
    """Exact time for a mode started at margin 0 to reach margin m (arrays broadcast to (B,)).

    log_m, log_A0 (optional) are log m and log A0; pass them when m or A0 may under/overflow
    (A0 ~ alpha^2): only they enter the dominant term asinh(m / A0).
    """
    m, lam, n, A0 = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (m, lam, n, A0)))
    with np.errstate(divide="ignore"):
        log_m = np.log(m) if log_m is None else np.broadcast_to(np.asarray(log_m, dtype=np.float64), m.shape)
        log_A0 = np.log(A0) if log_A0 is None else np.broadcast_to(np.asarray(log_A0, dtype=np.float64), m.shape)
    I = np.empty_like(m)
    big = A0 >= _DIRECT_MIN_A0  # large initializations: I(m) is small and Ein(m) + ... would cancel
    if big.any():
        I[big] = _i_direct(m[big], A0[big])
    sm = ~big
    if sm.any():
        ms, As = m[sm], A0[sm]
        h = np.hypot(As, ms)
        # sqrt(A0^2 + m^2) - A0 - m without cancellation: A0^2/(h + m) - A0 when A0 <= m, else m^2/(h + A0) - m
        with np.errstate(divide="ignore", invalid="ignore"):
            lin = np.where(As <= ms, (As / (h + ms)) * As - As, (ms / (h + As)) * ms - ms)
        lin = np.where(h > 0, lin, 0.0)  # m = A0 = 0
        e_in, e_i = _ein_ei(ms)
        I[sm] = e_in + lin + _r2(ms, As, e_i)
    return (asinh_ratio(log_m, log_A0) + I / n) / lam


def _i_direct(m, A0):
    """I(m) = int_0^m (e^x - 1) / sqrt(A0^2 + x^2) dx for A0 >= 1, by 64-panel 12-node Gauss-Legendre.

    The integrand is analytic within distance A0 >= 1 of [0, m] (poles at +-i A0) and panels are at most
    M_CAP/64 < 1 wide, so each panel converges like 4.2^-24: float64 accuracy. m, A0: (k,).
    """
    xg, wg = _GL12
    panels = 64
    u = (np.arange(panels)[:, None] + 0.5 * (xg[None, :] + 1.0)).reshape(-1) / panels  # (64*12,) in (0, 1)
    x = m[:, None] * u[None, :]
    with np.errstate(over="ignore", invalid="ignore"):
        f = np.expm1(x) / np.hypot(A0[:, None], x)
    return (f @ np.tile(wg, panels)) * (0.5 * m / panels)


def mode_rate(m, lam, n, A0):
    """dm/dt = lam n sqrt(A0^2 + m^2) / (e^m + n - 1)."""
    return lam * n * np.hypot(A0, m) / (np.exp(m) + n - 1)


def mode_loss(m, n):
    """L_mode(m) = log(1 + (n - 1) e^{-m}) and its derivative dL/dm."""
    e = (n - 1) * np.exp(-m)
    return np.log1p(e), -e / (1 + e)


def _newton(fun, x0, lo, hi, maxit=50, xtol=2e-13, *, subset=False, todo=None):
    """Vectorised safeguarded Newton for f increasing with f(lo) <= 0 <= f(hi); bisection fallback.

    ``subset=True``: ``fun(x, idx)`` is called with only the entries still iterating (``idx`` their indices, 1-D
    arrays): a converged entry is not evaluated again (active-set masking). ``todo``: the indices to iterate at
    all (the others keep their clipped start).
    """
    if not subset:
        x = np.clip(x0, lo, hi)
        for _ in range(maxit):
            f, df = fun(x)
            lo = np.where(f <= 0, x, lo)
            hi = np.where(f >= 0, x, hi)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                xn = x - f / df
            bad = ~((xn >= lo) & (xn <= hi))  # NaN-safe; landing on an end is fine
            xn = np.where(bad, 0.5 * (lo + hi), xn)
            tol = xtol * np.maximum(1.0, np.abs(x))
            done = (np.abs(xn - x) <= tol) | (hi - lo <= tol)
            x = xn
            if done.all():
                break
        return x
    x0, lo, hi = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (x0, lo, hi)))
    shape = x0.shape
    lo, hi = lo.reshape(-1).copy(), hi.reshape(-1).copy()
    x = np.clip(x0.reshape(-1), lo, hi)
    act = np.arange(x.size) if todo is None else np.asarray(todo)
    for _ in range(maxit):
        if act.size == 0:
            break
        xa = x[act]
        r = fun(xa, act)
        f, df = r[0], r[1]
        la = np.where(f <= 0, xa, lo[act])
        ha = np.where(f >= 0, xa, hi[act])
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            xn = xa - f / df
        bad = ~((xn >= la) & (xn <= ha))  # NaN-safe; landing on an end is fine
        xn = np.where(bad, 0.5 * (la + ha), xn)
        tol = xtol * np.maximum(1.0, np.abs(xa))
        step = np.abs(xn - xa)
        done = (step <= tol) | (ha - la <= tol)
        if len(r) > 2:  # f'' given: Newton's error after this step is |f'' / (2 f')| step^2 (+ higher order), so
            # stop without the confirming evaluation when that is 100 times below the tolerance and the step
            # is small (<= 1e-5: the functions used here vary on scales >= ~1 of x, so the cubic term is
            # below ~1e-16) and well inside the quadratic regime (|f''/(2 f')| step <= 1e-3)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                k = np.abs(0.5 * r[2] / df) * step
            done |= ~bad & (step <= 1e-5) & (k <= 1e-3) & (k * step <= 0.01 * tol)
        x[act], lo[act], hi[act] = xn, la, ha
        act = act[~done]
    return x.reshape(shape)


def margin_at(t, lam, n, A0, y0=None, *, log_A0=None, tau_cap=None):
    """Margin m(t) of a mode (inverse of :func:`tau`); returns (m, log m). Capped at M_CAP.

    Works in y = log m and log A0 (pass ``log_A0`` when A0 may underflow, e.g. alpha < 1e-154):
    at tiny alpha the margins stay below the float64 range for most of stage 1. ``y0``: warm start (NaN entries:
    none); ``tau_cap``: tau(M_CAP) of each entry when the caller has it (it depends on the mode only).
    Only the entries with 0 < t < tau(M_CAP) are iterated, each until it has converged.
    """
    t, lam, n, A0 = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (t, lam, n, A0)))
    shape = t.shape
    with np.errstate(divide="ignore"):
        lA0 = np.log(A0) if log_A0 is None else np.broadcast_to(np.asarray(log_A0, dtype=np.float64), shape)
    t, lam, n, A0, lA0 = (x.reshape(-1) for x in (t, lam, n, A0, lA0))
    lt = lam * t
    # bounds: tau(m) >= asinh(m/A0)/lam and tau(m) <= (e^m + n - 1)/(n lam) asinh(m/A0)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        log_hi = np.where(lt > 30, lA0 + lt - _LOG2, lA0 + np.log(np.sinh(lt)))
        log_hi = np.minimum(log_hi, math.log(M_CAP))
        s_lo = lt * n / (np.exp(np.exp(log_hi)) + n - 1)
        log_lo = np.where(s_lo > 30, lA0 + s_lo - _LOG2, lA0 + np.log(np.sinh(s_lo)))
    pos = t > 0
    log_lo = np.where(pos, log_lo, -745.0)
    log_hi = np.where(pos, log_hi, -744.0)
    if tau_cap is None:
        tau_cap = tau(np.full_like(t, M_CAP), lam, n, A0, log_A0=lA0)
    capped = pos & (np.broadcast_to(np.asarray(tau_cap, dtype=np.float64), shape).reshape(-1) <= t)
    lt_all = np.log(np.where(pos, t, 1.0))
    nl_all = n * lam

    def fun(y, i):  # log tau(e^y) - log t, increasing in y; derivative (dtau/dy) / tau
        m = np.exp(y)
        li, ni, Ai, lAi = lam[i], n[i], A0[i], lA0[i]
        tm = tau(m, li, ni, Ai, log_m=y, log_A0=lAi)
        # dtau/dy = m / (dm/dt) = (e^m + n - 1) / (lam n) * m / sqrt(A0^2 + m^2), the last factor from log(m/A0)
        d = y - lAi
        with np.errstate(over="ignore"):
            e2 = np.exp(-2.0 * np.abs(d))
            frac = np.where(d > 0, 1.0, np.exp(-np.abs(d))) / np.sqrt(1.0 + e2)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            em = np.exp(m)
            g = (em + ni - 1) / nl_all[i] * frac / tm
            # F'' = g (1 + m e^m / (e^m + n - 1) - (m/h)^2 - g), from tau'' = tau' (e^m / (e^m + n - 1) - m / h^2)
            d2 = g * (1.0 + m / (1.0 + (ni - 1) / em) - frac * frac - g)
            return np.log(tm) - lt_all[i], g, d2

    mid = 0.5 * (log_lo + log_hi)
    if y0 is None:
        start = mid
    else:
        y0 = np.broadcast_to(np.asarray(y0, dtype=np.float64), shape).reshape(-1)
        start = np.where(np.isfinite(y0), y0, mid)
    y = _newton(fun, start, log_lo, log_hi, subset=True, todo=np.flatnonzero(pos & ~capped))
    y = np.where(capped, math.log(M_CAP), y)
    m = np.where(pos, np.exp(y), 0.0)
    return m.reshape(shape), y.reshape(shape)


# ----------------------------------------------------------------------------- the loss along the flow
class ReducedSolution:
    """L(t), margins and dL/dt of a batch of configurations, from the exact quadratures."""

    def __init__(self, modes: Modes):
        self.modes = modes
        self._y = {}  # warm starts: mode -> log margins (B,) of the last evaluation (NaN: none yet)
        self._tcap = {}  # mode -> tau(M_CAP) (B,), computed once
        self._pred = {}  # mode -> (log t, dlog tau/dy, its derivative) of the warm starts, for a predictor

    def _mode_arrays(self, mode):
        md = self.modes
        act = md.active[mode]
        return (act, np.where(act, md.lam[mode], 1.0), np.where(act, md.n[mode], 2.0), np.where(act, md.A0[mode], 1.0),
                np.where(act, md.log_A0[mode], 0.0))

    def tau_cap(self, mode):
        """tau(M_CAP) of ``mode`` for every configuration (entries of inactive modes: a dummy mode's)."""
        if mode not in self._tcap:
            _, lam, n, A0, lA0 = self._mode_arrays(mode)
            self._tcap[mode] = tau(np.full(self.modes.S.shape, M_CAP), lam, n, A0, log_A0=lA0)
        return self._tcap[mode]

    def subset(self, keep):
        """The solution of the configurations ``keep`` (indices), with their warm starts and cached tau(M_CAP)."""
        md = self.modes
        sub = ReducedSolution(Modes(md.S[keep], md.R[keep], md.D[keep], md.alpha[keep]))
        sub._y = {m: y[keep] for m, y in self._y.items()}
        sub._pred = {m: tuple(v[keep] for v in p) for m, p in self._pred.items()}
        sub._tcap = {m: v[keep] for m, v in self._tcap.items()}
        return sub

    def state(self, t, warm=True, idx=None):
        """dict(a, b, loss, relation_loss (= L_R), subject_loss (= L_S), dloss_dt) at times t (B,).

        ``idx``: evaluate only those configurations (t then has their shape); the warm starts of the others are
        kept."""
        md = self.modes
        if idx is None:
            def sel(a):
                return a
        else:
            def sel(a):
                return a[idx]
        size = md.size if idx is None else len(idx)
        out = {}
        L, dL = 0.0, 0.0
        for mode, key in (("subject", "a"), ("relation", "b")):
            act_all = md.active[mode]
            act = sel(act_all)
            if act.any():
                _, lam_a, n_a, A0_a, lA0_a = self._mode_arrays(mode)
                lam, nn, A0, lA0 = sel(lam_a), sel(n_a), sel(A0_a), sel(lA0_a)
                n = sel(md.n[mode])
                tt = np.where(act, t, 0.0)
                y0 = None
                if warm and mode in self._y:
                    y0 = sel(self._y[mode])
                    if mode in self._pred:  # second-order Taylor predictor in log t from the last solution
                        lt0, g, d2 = (sel(v) for v in self._pred[mode])
                        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                            dl = np.log(tt) - lt0
                            yp = y0 + dl / g - d2 * dl * dl / (2.0 * g ** 3)
                        y0 = np.where(np.isfinite(yp), yp, y0)
                m, y = margin_at(tt, lam, nn, A0, y0, log_A0=lA0, tau_cap=sel(self.tau_cap(mode)))
                # dlog tau / dy at the solution (tau = t) and its derivative, for the next predictor (NaN where
                # t = 0 or the margin is capped)
                with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                    em = np.exp(m)
                    frac = m / np.hypot(A0, m)
                    g = (em + nn - 1) / (lam * nn) * frac / tt
                    d2 = g * (1.0 + m / (1.0 + (nn - 1) / em) - frac * frac - g)
                    lt = np.log(tt)
                ok = (tt > 0) & (m < M_CAP)
                g = np.where(ok, g, np.nan)
                if idx is None:
                    self._y[mode] = y
                    self._pred[mode] = (lt, g, d2)
                else:
                    if mode not in self._y:
                        self._y[mode] = np.full(md.size, np.nan)
                    self._y[mode][idx] = y
                    if mode not in self._pred:
                        self._pred[mode] = tuple(np.full(md.size, np.nan) for _ in range(3))
                    for v, w in zip(self._pred[mode], (lt, g, d2)):
                        v[idx] = w
                lm, dlm = mode_loss(m, n)
                rate = mode_rate(m, np.where(act, lam, 0.0), n, np.where(act, A0, 0.0))
                lm = np.where(act, lm, 0.0)
                dlm_dt = np.where(act, dlm * rate, 0.0)
                m = np.where(act, m, 0.0)
            else:
                m = lm = dlm_dt = np.zeros(size)
            out[key] = m
            out[f"{mode}_loss"] = lm
            L = L + lm
            dL = dL + dlm_dt
        out["loss"], out["dloss_dt"] = L, dL
        return out

    def crossing_time(self, theta, guess=None):
        """First time L(t) = theta (B,); 0 where L(0) <= theta, nan where theta <= 0 (never reached)."""
        md = self.modes
        if md.S.ndim != 1:  # the Newton iteration works on 1-D batches
            flat = ReducedSolution(Modes(*(v.reshape(-1) for v in (md.S, md.R, md.D, md.alpha))))
            th = np.broadcast_to(np.asarray(theta, dtype=np.float64), md.S.shape).reshape(-1)
            g = None if guess is None else np.broadcast_to(np.asarray(guess, dtype=np.float64), md.S.shape).reshape(-1)
            return flat.crossing_time(th, g).reshape(md.S.shape)
        theta = np.broadcast_to(np.asarray(theta, dtype=np.float64), md.S.shape)
        L0 = np.log(md.R * md.D)
        # bracket from the modes alone: L > theta while one mode alone is above theta; L <= theta once
        # both are at or below theta/2
        t_lo = np.zeros(md.S.shape)
        t_hi = np.zeros(md.S.shape)
        for mode in ("subject", "relation"):
            act = md.active[mode]
            n, lam, A0 = md.n[mode], np.where(act, md.lam[mode], 1.0), np.where(act, md.A0[mode], 1.0)
            lA0 = np.where(act, md.log_A0[mode], 0.0)
            nn = np.where(act, n, 2.0)
            with np.errstate(divide="ignore", invalid="ignore"):
                m_hi = np.log((nn - 1) / np.expm1(np.maximum(theta / 2, 1e-300)))
                m_lo = np.log((nn - 1) / np.expm1(np.maximum(theta, 1e-300)))
            need_hi = act & (theta / 2 < np.log(nn))
            need_lo = act & (theta < np.log(nn))
            th = tau(np.clip(np.where(need_hi, m_hi, 1.0), 0, M_CAP), lam, nn, A0, log_A0=lA0)
            tl = tau(np.clip(np.where(need_lo, m_lo, 1.0), 0, M_CAP), lam, nn, A0, log_A0=lA0)
            t_hi = np.maximum(t_hi, np.where(need_hi, th, 0.0))
            t_lo = np.maximum(t_lo, np.where(need_lo, tl, 0.0))
        trivial = theta >= L0
        never = ~(theta > 0)
        t_lo = np.where(trivial | never, 1.0, t_lo)
        t_hi = np.where(trivial | never, 2.0, t_hi)
        x_lo, x_hi = np.log(np.maximum(t_lo, 1e-300)), np.log(t_hi)
        # the warm starts of an earlier crossing are kept: the predictor carries them to the new times

        def fun(x, i):  # theta - L(e^x), increasing in x
            t = np.exp(x)
            st = self.state(t, idx=i)
            return theta[i] - st["loss"], -t * st["dloss_dt"]

        x = _newton(fun, 0.5 * (x_lo + x_hi) if guess is None else np.log(np.maximum(guess, 1e-300)), x_lo, x_hi,
                    subset=True, todo=np.flatnonzero(~(trivial | never)))
        t = np.exp(x)
        t = np.where(trivial, 0.0, t)
        return np.where(never, np.nan, t)


def separated_estimates(modes: Modes, theta) -> dict:
    """Leading-order phase times for a threshold, treating the modes as separated in time.

    The faster mode escapes first; a threshold above log n of the slower mode is crossed while the
    faster one escapes (its loss reaching theta - log n_slow), otherwise while the slower one does
    (the faster one done). Returns ``leading`` = log(1/alpha^2)/lam and ``leading_o1`` =
    [log(1/alpha^2) + log(4 sqrt(c) m*) + Ein(m*)/n] / lam for that mode (m* its margin at the crossing).
    """
    md = modes
    theta = np.broadcast_to(np.asarray(theta, dtype=np.float64), md.S.shape)
    lam_s, lam_r = md.lam["subject"], md.lam["relation"]
    rel_first = (lam_r > lam_s) | ~md.active["subject"]
    first = np.where(rel_first, 1, 0)  # 1: relation first
    n_first = np.where(rel_first, md.R, md.D)
    n_second = np.where(rel_first, md.D, md.R)
    during_first = theta > np.log(n_second)
    target = np.where(during_first, theta - np.log(n_second), theta)
    n_mode = np.where(during_first, n_first, n_second)
    use_rel = np.where(during_first, first == 1, first == 0)
    lam = np.where(use_rel, lam_r, lam_s)
    c = np.where(use_rel, md.c["relation"], md.c["subject"])
    with np.errstate(divide="ignore", invalid="ignore"):
        m_star = np.log((n_mode - 1) / np.expm1(target))
        log_inv = -2.0 * md.log_alpha  # log(1/alpha^2) without forming alpha^2
        lead = log_inv / lam
        o1 = (log_inv + np.log(4 * np.sqrt(c) * m_star) + ein(np.maximum(m_star, 0)) / n_mode) / lam
    trivial = target >= np.log(n_mode)
    return dict(leading=np.where(trivial, 0.0, lead), leading_o1=np.where(trivial, 0.0, o1),
                mode=np.where(use_rel, "relation", "subject"))


def phase_times(S, R, D, alpha, eps_conv=1e-2) -> dict:
    """Exact (quadrature) and leading-order phase times t1, t2, t3 of SPEC §3 for a batch.

    All inputs broadcast to (B,). H(A|R) = log D for the tables the reduction covers. Returns arrays:
    t1, t2, t3 (exact), t{i}_leading, t{i}_leading_o1, t{i}_mode (which mode crosses), thresholds,
    rates and the hallucination flag.

    Any 0 < alpha <= ALPHA_MAX (1e-300 included: everything is done with log alpha). The leading-order
    columns are the alpha -> 0 asymptotics: for alpha >~ 1 they are meaningless (even negative), while
    the exact t1, t2, t3 stay exact. Raises ValueError for alpha outside that range or eps_conv <= 0.
    """
    eps = np.asarray(eps_conv, dtype=np.float64)
    if not np.all(np.isfinite(eps) & (eps > 0)):
        raise ValueError(f"eps_conv = {eps_conv}: the convergence level must be a positive number")
    md = Modes(S, R, D, alpha)
    logA, H = np.log(md.R * md.D), np.log(md.D)
    th = (0.5 * (logA + H), 0.5 * H, np.broadcast_to(np.float64(eps_conv), md.S.shape))
    sol = ReducedSolution(md)
    out = {}
    for i, theta in enumerate(th, start=1):
        est = separated_estimates(md, theta)
        out[f"t{i}"] = sol.crossing_time(theta, guess=est["leading_o1"])
        out[f"t{i}_leading"] = est["leading"]
        out[f"t{i}_leading_o1"] = est["leading_o1"]
        out[f"t{i}_mode"] = est["mode"]
        out[f"theta{i}"] = np.asarray(theta, dtype=np.float64)
    for i in (1, 2, 3):
        bad = ~np.isfinite(out[f"t{i}"])
        if bad.any():  # not expected for valid inputs: refuse rather than return inf/NaN silently
            j = np.flatnonzero(bad)[0]
            raise ValueError(f"phase_times: t{i} is not finite for S = {md.S.flat[j]:g}, R = {md.R.flat[j]:g}, "
                             f"D = {md.D.flat[j]:g}, alpha = {md.alpha.flat[j]:g}")
    out["rate_subject"] = md.lam["subject"]
    out["rate_relation"] = md.lam["relation"]
    out["hallucination_stage_exists"] = hallucination_stage_exists(md.S, md.R, md.D)
    return out


def plateau_score(sol: ReducedSolution, t) -> tuple:
    """(|t dL/dt|, d/d(log t) of it) at times t (B,): the quantity the SPEC §3 plateau minimises, and its slope.

    Per mode, -dL_mode/dt = f(m) = (n - 1) / (e^m + n - 1) * dm/dt, so |t dL/dt| = t sum f and its derivative
    in log t is t sum [f + t f'(m) dm/dt], with f' in closed form (no finite differences).
    """
    st = sol.state(t)
    md = sol.modes
    score, slope = np.zeros(md.size), np.zeros(md.size)
    for mode, key in (("subject", "a"), ("relation", "b")):
        act = md.active[mode]
        m = st[key]
        n = np.where(act, md.n[mode], 2.0)
        lam = np.where(act, md.lam[mode], 0.0)
        A0 = np.where(act, md.A0[mode], 0.0)
        e = np.exp(m)
        q = e + n - 1
        h = np.hypot(A0, m)
        rate = lam * n * h / q  # dm/dt
        f = (n - 1) / q * rate
        with np.errstate(invalid="ignore", divide="ignore"):
            m_over_h = np.where(h > 0, m / h, 0.0)
        fprime = (n - 1) * lam * n * (m_over_h * q - 2 * h * e) / q**3  # df/dm
        score = score + t * f
        slope = slope + t * (f + t * fprime * rate)
    return score, slope, st


def _sub_solution(md: Modes, k) -> ReducedSolution:
    return ReducedSolution(Modes(md.S[k], md.R[k], md.D[k], md.alpha[k]))


def _log_slope(sol: ReducedSolution, x):
    """d log|t dL/dt| / d log t at x = log t: the sign of the slope, nearly linear across a bracket."""
    score, slope, _ = plateau_score(sol, np.exp(x))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(score > 0, slope / score, slope)


def _illinois(sol: ReducedSolution, xa, xb, fa, fb, xtol):
    """Root of d log|t dL/dt| / d log t in [xa, xb] with fa < 0 <= fb: the Illinois method (regula falsi with
    the stale end's value halved, superlinear), with a bisection step wherever three steps in a row did not
    halve the bracket. A configuration stops when its bracket or step is below ``xtol`` (relative); only the
    others are evaluated further."""
    x = 0.5 * (xa + xb)
    side = np.zeros(xa.size)
    ref = xb - xa  # the bracket three steps ago
    act = np.arange(xa.size)  # configurations still iterating
    for it in range(200):
        with np.errstate(invalid="ignore", divide="ignore"):
            xn = (xa * fb - xb * fa) / (fb - fa)
        xn = np.where(np.isfinite(xn) & (xn > xa) & (xn < xb), xn, 0.5 * (xa + xb))
        if it % 3 == 2:  # safeguard
            slow = (xb - xa) > 0.5 * ref
            xn = np.where(slow, 0.5 * (xa + xb), xn)
            side = np.where(slow, 0, side)
            ref = xb - xa
        tol = xtol * np.maximum(1.0, np.abs(xn))
        going = ~((np.abs(xn - x[act]) <= tol) | (xb - xa <= tol))
        x[act] = xn
        if not going.any():
            break
        if not going.all():  # drop the converged configurations, keeping the others' warm starts
            keep = np.flatnonzero(going)
            sol = sol.subset(keep)
            act, xn, xa, xb, fa, fb, side, ref = (v[keep] for v in (act, xn, xa, xb, fa, fb, side, ref))
        fn = _log_slope(sol, xn)
        right = fn < 0  # the root is right of xn
        fb = np.where(right & (side == -1), 0.5 * fb, fb)
        fa = np.where(~right & (side == 1), 0.5 * fa, fa)
        xa, xb = np.where(right, xn, xa), np.where(right, xb, xn)
        fa, fb = np.where(right, fn, fa), np.where(right, fb, fn)
        side = np.where(right, -1, 1)
        exact = fn == 0
        xa, xb = np.where(exact, xn, xa), np.where(exact, xn, xb)
    return x


PLATEAU_CHUNK = 8192  # configurations searched together: larger batches only add memory traffic (measured)


def plateaus(S, R, D, alpha, t1, t2, *, grid: int = 9, xtol: float = 1e-15) -> dict:
    """SPEC §3 plateau of a batch: the time in [t1, t2] where |dL/d log t| = |t dL/dt| is smallest, and the loss,
    relation-only loss and subject-only loss there (arrays; NaN where t1, t2 are missing or t2 <= t1).

    |t dL/dt| and its slope in log t (closed form, :func:`plateau_score`) are evaluated on ``grid`` points
    uniform in log t. Next to the smallest value the slope changes sign (the minimum is bracketed; it is then
    the slope's root, found by the Illinois method to ``xtol`` in log t), or the minimum is at an end of
    [t1, t2], or the slope's turn is hidden inside a grid cell: at tiny alpha the stages turn sharply in log t
    and the minimum sits just before one of them. Then the search zooms into the two cells around the smallest
    value (the grid again, ``(grid - 1) / 2`` times finer) until it is bracketed. Vectorised over batches of
    PLATEAU_CHUNK configurations: about as costly as the phase times themselves.
    """
    S, R, D, alpha, t1, t2 = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (S, R, D, alpha, t1, t2)))
    shape = S.shape
    S, R, D, alpha, t1, t2 = (x.reshape(-1) for x in (S, R, D, alpha, t1, t2))
    out = {k: np.full(S.size, np.nan) for k in ("t", "loss", "relation_loss", "subject_loss")}
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(t1) & np.isfinite(t2) & (t1 > 0) & (t2 > t1)
    valid = np.flatnonzero(ok)
    for start in range(0, valid.size, PLATEAU_CHUNK):
        idx = valid[start:start + PLATEAU_CHUNK]
        md = Modes(S[idx], R[idx], D[idx], alpha[idx])
        t = np.exp(_plateau_log_time(md, np.log(t1[idx]), np.log(t2[idx]), grid, xtol))
        st = ReducedSolution(md).state(t, warm=False)
        out["t"][idx] = t
        for name in ("loss", "relation_loss", "subject_loss"):
            out[name][idx] = st[name]
    return {k: v.reshape(shape) for k, v in out.items()}


def _plateau_log_time(md: Modes, lo, hi, grid: int, xtol: float):
    """log of the plateau time of every configuration of ``md`` in [lo, hi] (log t1, log t2): see plateaus."""
    B = md.size
    a, b = lo.copy(), hi.copy()  # the search interval of each configuration
    x = np.empty(B)  # the plateau (log t): a bracketed root or an end
    br = np.zeros(B, dtype=bool)
    xa, xb, fa, fb = (np.empty(B) for _ in range(4))
    alt = None  # a second local minimum seen on the first grid: (configurations, bracket, slopes)
    todo = np.arange(B)
    u = np.linspace(0.0, 1.0, grid)[:, None]
    for rnd in range(64):
        if todo.size == 0:
            break
        sol = _sub_solution(md, todo)
        xs = a[todo][None, :] + (b[todo] - a[todo])[None, :] * u  # (grid, n), ascending
        xs[-1] = b[todo]
        sc, sl = np.empty_like(xs), np.empty_like(xs)
        for g in range(grid):
            sc[g], sl[g], _ = plateau_score(sol, np.exp(xs[g]))
        c = np.arange(todo.size)
        j = np.argmin(sc, axis=0)
        jl, jr = np.maximum(j - 1, 0), np.minimum(j + 1, grid - 1)
        s_j = sl[j, c]
        right = (s_j < 0) & (j < grid - 1) & (sl[jr, c] >= 0)  # the turn is in the cell right of j
        left = ~right & (s_j >= 0) & (j > 0) & (sl[jl, c] < 0)  # ... or left of it
        at_end = ((j == 0) & (s_j >= 0) & (xs[0] == lo[todo])) | \
            ((j == grid - 1) & (s_j <= 0) & (xs[-1] == hi[todo]))
        tiny = (xs[jr, c] - xs[jl, c]) <= xtol * np.maximum(1.0, np.abs(xs[j, c]))
        done = right | left | at_end | tiny
        x[todo] = xs[j, c]  # the best point so far (final for an end or a cell below xtol)
        for m, lo_i, hi_i in ((right, j, jr), (left, jl, j)):
            kk = todo[m]
            br[kk] = True
            xa[kk], xb[kk] = xs[lo_i, c][m], xs[hi_i, c][m]
            with np.errstate(invalid="ignore", divide="ignore"):  # d log|t dL/dt| / d log t, as _illinois
                fa[kk] = np.where(sc[lo_i, c] > 0, sl[lo_i, c] / sc[lo_i, c], sl[lo_i, c])[m]
                fb[kk] = np.where(sc[hi_i, c] > 0, sl[hi_i, c] / sc[hi_i, c], sl[hi_i, c])[m]
        if rnd == 0:  # far from small alpha |t dL/dt| can have two local minima: keep the other one's bracket
            turn = (sl[:-1] < 0) & (sl[1:] >= 0)  # (grid - 1, n) cells where the slope turns - to +
            cell = np.argmin(np.where(turn, np.minimum(sc[:-1], sc[1:]), np.inf), axis=0)
            main = np.where(right, j, np.where(left, jl, -1))
            other = turn[cell, c] & (cell != main)
            if other.any():
                with np.errstate(invalid="ignore", divide="ignore"):
                    g = np.where(sc > 0, sl / sc, sl)
                alt = (todo[other], xs[cell, c][other], xs[cell + 1, c][other], g[cell, c][other],
                       g[cell + 1, c][other])
        hidden = ~done  # zoom into the two cells around the smallest value
        a[todo[hidden]], b[todo[hidden]] = xs[jl, c][hidden], xs[jr, c][hidden]
        todo = todo[hidden]
    k = np.flatnonzero(br)
    if k.size:
        x[k] = _illinois(_sub_solution(md, k), xa[k], xb[k], fa[k], fb[k], xtol)
    if alt is not None:  # the smaller of the two minima
        k = alt[0]
        sub = _sub_solution(md, k)
        x2 = _illinois(sub, *alt[1:], xtol)
        better = plateau_score(_sub_solution(md, k), np.exp(x2))[0] < plateau_score(sub, np.exp(x[k]))[0]
        x[k[better]] = x2[better]
    return x


def plateau(S, R, D, alpha, t1, t2) -> dict:
    """SPEC §3 plateau of one configuration (:func:`plateaus` for a batch of one): dict of floats
    ``t``, ``loss``, ``relation_loss``, ``subject_loss``."""
    return {k: float(v) for k, v in plateaus(S, R, D, alpha, t1, t2).items()}
