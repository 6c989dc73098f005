"""Exact solution of one mode of the reduced flow (:mod:`analysis.theory.modes`) by quadrature.

The time to reach margin m is (exactly)::

    tau(m) = (1/lam) [ asinh(m / A0) + I(m) / n ],   I(m) = int_0^m (e^x - 1) / sqrt(A0^2 + x^2) dx
    I(m)  = Ein(m) + (sqrt(A0^2 + m^2) - A0 - m) + R2(m),   Ein(m) = int_0^m (e^x - 1)/x dx = Ei(m) - gamma - log m

with ``R2 = O(A0^2 e^m / m^3)`` computed in closed form when ``A0 > 1e-6`` (:func:`_r2`: a term-by-term
integrated Taylor series below max(1, 4 A0) and an expansion in (A0/x)^2 with exponential-integral recurrences
above; exact to a few ulps of I(m)); below, |R2| < 5e-11 for the margins up to t3, a relative error below 1e-11
in t, and it is dropped.
Margins at a given time come from inverting tau (safeguarded Newton, :func:`margin_at`), which evaluates only
the entries not yet converged, starts from a warm start when the caller has one and stops once Newton's own
error estimate |f''/(2 f')| step^2 is 100 times below the tolerance.
Everything is float64 and converged to ~1e-12 relative; the error is that of double precision, not of an ODE
solver.

Any scale of initialization: every quadrature works with ``log A0 = 2 log alpha - log(2 sqrt c)`` and the
margins with ``log m``: ``asinh(m / A0) = log 2 + log m - log A0`` once ``m / A0 > 1e8``. Nothing squares alpha
or A0. For A0 >= 1 (alpha >~ 1.7) Ein(m) + ... + R2 would cancel to a small I(m), which is then integrated
directly (:func:`_i_direct`).

Leading order (``alpha -> 0``): ``tau(m) = [log(1/alpha^2) + log(4 sqrt(c) m) + Ein(m)/n] / lam + O(alpha^2)``,
so each phase time is ``log(1/alpha^2) / lam`` of the mode that crosses it, plus an O(1) term.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import expi

EULER_GAMMA = 0.5772156649015329
M_CAP = 60.0  # largest margin tracked: L_mode = (n-1) e^{-60} is below any loss of interest
_DIRECT_MIN_A0 = 1.0  # from here on I(m) is integrated directly (see _i_direct)
_R2_MIN_A0 = 1e-6  # below this |R2| <~ 50 A0^2 = 5e-11 for margins up to 12 (< 1e-11 relative in t): dropped
_GL12 = np.polynomial.legendre.leggauss(12)
_GL24 = np.polynomial.legendre.leggauss(24)
_LOG2 = math.log(2.0)
_ASINH_LOG = 18.5  # asinh(x) = log(2x) + 1/(4x^2) + ...: beyond x = e^18.5 ~ 1e8 the correction is < 3e-17


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
        res[gl] = _r2_gauss(mm[gl], aa[gl])
    ser = ~gl
    if ser.any():
        ms, As = mm[ser], aa[ser]
        X = np.maximum(1.0, 4.0 * As)
        low = _r2_series(np.minimum(ms, X), As)
        up = ms > X
        if up.any():
            ei = expi(ms[up]) if ei_m is None else ei_m[idx][ser][up]
            low[up] += _r2_tail(ms[up], As[up], X[up], ei)
        res[ser] = low
    out[idx] = res
    return out


def _r2_gauss(ms, As):
    """R2 on [0, m] for m <= 2 A0 by 24-node Gauss-Legendre (see :func:`_r2`); ms, As: (k,)."""
    As = As[:, None]
    xg, wg = _GL24
    x = 0.5 * ms[:, None] * (xg[None] + 1.0)
    h = np.hypot(As, x)
    g = (np.expm1(x) - x) * (-(As / h) * (As / (x * (x + h))))
    return 0.5 * ms * (g @ wg)


def _r2_series(x0, As):
    """The part of R2 on [0, x0] (x0 > 2 A0) from the term-by-term integrated Taylor series and the recurrence of
    the J_j (see :func:`_r2`); x0, As: (k,)."""
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
    return A2 * tot


def _r2_tail(mu, Au, Xu, ei):
    """The part of R2 on [X, m] (m > X = max(1, 4 A0)) from the expansion in (A0/x)^2 with the exponential-integral
    recurrence G_n (see :func:`_r2`); mu, Au, Xu: (k,), ei: Ei(m)."""
    q = float(np.max((Au / Xu) ** 2))
    K = max(1, int(math.ceil(math.log(1e-17) / math.log(q))) - 1) if q > 0 else 1
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
    return s


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


def safeguarded_newton(fun, x0, lo, hi, maxit=50, xtol=2e-13, *, subset=False, todo=None):
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
    y = safeguarded_newton(fun, start, log_lo, log_hi, subset=True, todo=np.flatnonzero(pos & ~capped))
    y = np.where(capped, math.log(M_CAP), y)
    m = np.where(pos, np.exp(y), 0.0)
    return m.reshape(shape), y.reshape(shape)
