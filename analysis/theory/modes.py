"""The two modes of the class-reduced flow of model 1 and their closed forms: escape rates, plateaus and the
hallucination condition, vectorised over batches of configurations.

The reduction (:mod:`analysis.theory.reduction`) leaves two independent scalar equations, one per "mode"
(subject: margin ``a = K_s (w1 - w0)`` with ``n = D`` choices; relation: margin ``b`` with
``n = R`` choices)::

    dm/dt = lam * n * sqrt(A0^2 + m^2) / (e^m + n - 1),      L_mode(m) = log(1 + (n - 1) e^{-m})

with ``lam = 2 sqrt(c) / P`` the escape rate of the margin, ``(n, P, c) = (D, S R, R (D-1)/D)`` for
the subject mode and ``(R, R D, D (R-1)/R)`` for the relation mode, and ``A0 = Qhat / (2 sqrt(c))``,
``Qhat = K^2 - c (w1 - w0)^2`` the conserved hyperbolic invariant (``alpha^2`` for ``balanced`` and
``uniform`` initializations, whose margins start at 0). The loss is ``L = L_S(a) + L_R(b)``.

Any scale of initialization in models.linear.QUADRATURE_ALPHA (0 < alpha <= 1e100; above it the phase times
fall below ~1e-200 and the logits of the full model overflow anyway): :class:`Modes` raises ValueError outside.
``A0 ~ alpha^2`` underflows for alpha below ~1e-154 (and overflows above ~1e154), so the modes keep
``log A0 = 2 log alpha - log(2 sqrt c)``. The exact solution of each mode is :mod:`analysis.theory.quadrature`.
"""
from __future__ import annotations

import numpy as np

from models.linear import QUADRATURE_ALPHA

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
