"""The SPEC §3 plateau of the reduced flow: the time in [t1, t2] where |dL/d log t| is smallest, from the closed-form
slope of |t dL/dt| (:func:`plateau_score`), vectorised over batches of configurations."""
from __future__ import annotations

import numpy as np

from analysis.theory.modes import Modes
from analysis.theory.reduced_solution import ReducedSolution


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
