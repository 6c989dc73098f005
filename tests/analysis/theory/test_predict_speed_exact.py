"""The fast reduced-flow quadrature of analysis.theory.quadrature (closed-form R2, masked Newton with predictor and
a-posteriori stop) against straightforward references: 40-digit mpmath quadrature of R2, a fine composite
Gauss-Legendre R2 plugged into the same solver, and the residuals L(t_i) - theta_i of the phase times."""
import math

import numpy as np
import pytest

from analysis.theory import quadrature
from analysis.theory.modes import Modes
from analysis.theory.plateau import plateaus
from analysis.theory.quadrature import ein, margin_at, tau
from analysis.theory.reduced_solution import ReducedSolution, phase_times

mpmath = pytest.importorskip("mpmath")


def _r2_mpmath(m, A0):
    with mpmath.workdps(40):
        m_, a_ = mpmath.mpf(m), mpmath.mpf(A0)
        f = lambda x: (mpmath.exp(x) - 1 - x) * (1 / mpmath.sqrt(a_ ** 2 + x ** 2) - 1 / x)  # noqa: E731
        pts = [mpmath.mpf(0)] + [p for p in (a_, 2 * a_, 4 * a_, mpmath.mpf(1), mpmath.mpf(4)) if p < m_] + [m_]
        return float(mpmath.quad(f, pts))


_XG, _WG = np.polynomial.legendre.leggauss(16)


def _r2_fine(m, A0):
    """Straightforward reference: 16-node Gauss-Legendre on 64 panels in v = log x over [log m - 45, log m - 1]
    (the kink of the integrand at x ~ A0 spans several panels) and 8 panels in x over [m/e, m]."""
    out = np.zeros_like(m)
    sel = (A0 > quadrature._R2_MIN_A0) & (m > 1e-150) & np.isfinite(A0)
    mm, aa = m[sel], A0[sel][:, None]

    def g(x):
        h = np.hypot(aa, x)
        return (np.expm1(x) - x) * (-(aa / h) * (aa / (x * (x + h))))

    tot = np.zeros_like(mm)
    lo, hi = np.log(mm) - 45.0, np.log(mm) - 1.0
    for p in range(64):
        a = lo + (hi - lo) * p / 64
        b = lo + (hi - lo) * (p + 1) / 64
        v = 0.5 * (b - a)[:, None] * _XG[None] + 0.5 * (a + b)[:, None]
        x = np.exp(v)
        tot += 0.5 * (b - a) * ((g(x) * x) @ _WG)
    for p in range(8):
        a = mm * (math.exp(-1.0) + (1 - math.exp(-1.0)) * p / 8)
        b = mm * (math.exp(-1.0) + (1 - math.exp(-1.0)) * (p + 1) / 8)
        x = 0.5 * (b - a)[:, None] * _XG[None] + 0.5 * (a + b)[:, None]
        tot += 0.5 * (b - a) * (g(x) @ _WG)
    out[sel] = tot
    return out


def _random_configs(n, seed, alpha_lo=1e-3, alpha_hi=0.5):
    rng = np.random.default_rng(seed)
    D = rng.choice([2, 4, 8, 16, 32], n)
    S = D * rng.integers(1, 64, n)
    R = rng.integers(2, 65, n)
    alpha = np.exp(rng.uniform(np.log(alpha_lo), np.log(alpha_hi), n))
    return S, R, D, alpha


@pytest.mark.slow
def test_r2_closed_form_matches_40_digit_quadrature():
    rng = np.random.default_rng(7)
    pts = [(2.4482516216053294, 0.08205050459057556), (1e-4, 2e-6), (0.3, 0.2), (3.0, 0.9), (60.0, 0.5),
           (60.0, 2e-6), (1.0, 0.25), (1.0000001, 0.01), (4.1, 0.99)]
    pts += [(float(np.exp(rng.uniform(np.log(1e-3), np.log(60)))),
             float(np.exp(rng.uniform(np.log(1e-6), np.log(0.9))))) for _ in range(25)]
    m = np.array([p[0] for p in pts])
    A0 = np.array([p[1] for p in pts])
    got = quadrature._r2(m, A0)
    ref = np.array([_r2_mpmath(*p) for p in pts])
    I = ein(m)
    assert np.all(np.abs(got - ref) <= 1e-15 * I + 1e-300), np.max(np.abs(got - ref) / I)
    big = np.abs(ref) > 1e-200
    np.testing.assert_allclose(got[big], ref[big], rtol=1e-12)
    fine = _r2_fine(m, A0)  # the reference used below is itself exact to ~1e-14 of I(m)
    assert np.all(np.abs(fine - ref) <= 1e-14 * I)


def test_margin_at_inverts_tau():
    S, R, D, alpha = _random_configs(400, 3)
    md = Modes(S, R, D, alpha)
    rng = np.random.default_rng(4)
    for mode in ("subject", "relation"):
        lam, n, A0, lA0 = md.lam[mode], md.n[mode], md.A0[mode], md.log_A0[mode]
        t = tau(np.exp(rng.uniform(np.log(1e-4), np.log(30.0), S.size)), lam, n, A0, log_A0=lA0)
        m, y = margin_at(t, lam, n, A0, log_A0=lA0)
        np.testing.assert_allclose(tau(m, lam, n, A0, log_A0=lA0), t, rtol=2e-13)
        # warm starts (predictor) from other times give the same margins
        sol = ReducedSolution(md)
        for tt in (0.5 * t, 2.0 * t, t):
            st = sol.state(tt)
        key = "a" if mode == "subject" else "b"
        cold = ReducedSolution(md).state(t, warm=False)
        np.testing.assert_allclose(st[key], cold[key], rtol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("lo,hi,seed", [(1e-3, 0.5, 0), (1e-6, 1e-2, 1), (1e-3, 1e-1, 2)])
def test_fast_phase_times_and_plateaus_match_the_straightforward_quadrature(monkeypatch, lo, hi, seed):
    S, R, D, alpha = _random_configs(150, seed, lo, hi)
    fast = phase_times(S, R, D, alpha)
    fast_pl = plateaus(S, R, D, alpha, fast["t1"], fast["t2"])
    # residuals: L(t_i) = theta_i, evaluated cold (no warm start, no predictor)
    sol = ReducedSolution(Modes(S, R, D, alpha))
    for i in (1, 2, 3):
        st = sol.state(fast[f"t{i}"], warm=False)
        th = fast[f"theta{i}"]
        # |dL/dlog t| |dt/t| error in L for a relative error dt/t in t
        tol = 1e-12 * np.maximum(1, np.abs(fast[f"t{i}"] * st["dloss_dt"])) + 1e-13
        assert np.all(np.abs(st["loss"] - th) <= tol), np.max(np.abs(st["loss"] - th) / tol)
    monkeypatch.setattr(quadrature, "_r2", lambda m, A0, ei_m=None: _r2_fine(m, A0))
    ref = phase_times(S, R, D, alpha)
    for i in (1, 2, 3):
        np.testing.assert_allclose(fast[f"t{i}"], ref[f"t{i}"], rtol=1e-11)
    ref_pl = plateaus(S, R, D, alpha, ref["t1"], ref["t2"])
    for k in ("loss", "relation_loss", "subject_loss"):
        np.testing.assert_allclose(fast_pl[k], ref_pl[k], rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(fast_pl["t"], ref_pl["t"], rtol=1e-7)  # a flat minimum: t is ill-conditioned
