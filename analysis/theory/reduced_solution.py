"""The loss of the reduced flow along time and its phase times t1, t2, t3 (SPEC §3), vectorised over batches of
configurations: the two modes (:mod:`analysis.theory.modes`) solved exactly (:mod:`analysis.theory.quadrature`).

Phase times solve ``L(t) = theta`` (safeguarded Newton in log t, each step needing the two inversions of tau);
the inversion starts from a second-order Taylor predictor of log m in log t (from its last solution), and
tau(M_CAP) is computed once per mode. :func:`phase_times` raises ValueError if a result is not finite.
"""
from __future__ import annotations

import numpy as np

from analysis.theory.modes import Modes, hallucination_stage_exists
from analysis.theory.quadrature import M_CAP, ein, margin_at, mode_loss, mode_rate, safeguarded_newton, tau


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

        x = safeguarded_newton(fun, 0.5 * (x_lo + x_hi) if guess is None else np.log(np.maximum(guess, 1e-300)),
                               x_lo, x_hi, subset=True, todo=np.flatnonzero(~(trivial | never)))
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

    Any alpha in models.linear.QUADRATURE_ALPHA, 0 < alpha <= 1e100 (1e-300 included: everything is done with
    log alpha). The leading-order columns are the alpha -> 0 asymptotics: for alpha >~ 1 they are meaningless (even negative), while
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
