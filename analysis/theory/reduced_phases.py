"""Phase times of the reduced flow for every configuration, degenerate ones (R or D = 1) included.

:func:`analysis.theory.reduced_solution.phase_times` refuses a result that is not finite. For ``D = 1`` that is
the right answer, not an error: ``theta2 = H(A|R) / 2 = 0`` and the loss, positive at every finite time,
never reaches it, so ``t2`` does not exist. :func:`phase_times_any` here returns the same columns, with
SPEC §3's definition ("first time L(t) <= theta") applied to every row:

- ``t = 0`` where the loss starts at or below the threshold (``log|A| <= theta``: e.g. ``R = D = 1``,
  where the loss is 0 throughout, or ``eps_conv >= log|A|``);
- ``t = NaN`` (reported as null) where the threshold is never reached (``theta <= 0 < L``);
- otherwise the exact crossing, from :func:`analysis.theory.reduced_solution.phase_times` for ordinary rows and
  from its building blocks (:class:`analysis.theory.reduced_solution.ReducedSolution`) for the degenerate ones.
"""
from __future__ import annotations

import numpy as np

from analysis.theory.modes import Modes, escape_rates, hallucination_stage_exists
from analysis.theory.reduced_solution import ReducedSolution, separated_estimates
from analysis.theory.reduced_solution import phase_times as exact_phase_times

_FLOAT_KEYS = ("t{i}", "t{i}_leading", "t{i}_leading_o1", "theta{i}")


def phase_times_any(S, R, D, alpha, eps_conv=1e-2) -> dict:
    """Like :func:`analysis.theory.reduced_solution.phase_times` (same keys, arrays of shape (B,)), but valid for
    every configuration: a phase whose threshold is never reached is NaN instead of an error."""
    S, R, D, alpha = np.broadcast_arrays(*(np.atleast_1d(np.asarray(x, dtype=np.float64)) for x in (S, R, D, alpha)))
    deg = D == 1  # theta2 = log(D) / 2 = 0: never reached (or reached at t = 0 when R = 1 too)
    if not deg.any():
        return exact_phase_times(S, R, D, alpha, eps_conv)
    n = S.size
    out = {k.format(i=i): np.full(n, np.nan) for k in _FLOAT_KEYS for i in (1, 2, 3)}
    out.update({f"t{i}_mode": np.full(n, "", dtype="<U8") for i in (1, 2, 3)})
    if (~deg).any():
        p = exact_phase_times(S[~deg], R[~deg], D[~deg], alpha[~deg], eps_conv)
        for k in out:
            out[k][~deg] = p[k]
    md = Modes(S[deg], R[deg], D[deg], alpha[deg])
    sol = ReducedSolution(md)
    L0 = np.log(md.R * md.D)
    th = (0.5 * (L0 + np.log(md.D)), 0.5 * np.log(md.D), np.broadcast_to(np.float64(eps_conv), md.S.shape))
    for i, theta in enumerate(th, start=1):
        theta = np.asarray(theta, dtype=np.float64)
        trivial = theta >= L0  # already below at t = 0 (wins over "never": L = 0 = theta at R = D = 1)
        never = ~trivial & ~(theta > 0)
        with np.errstate(all="ignore"):
            est = separated_estimates(md, theta)
            t = sol.crossing_time(np.where(trivial | never, L0, theta))
        t = np.where(trivial, 0.0, np.where(never, np.nan, t))
        out[f"t{i}"][deg] = t
        for k in ("leading", "leading_o1"):
            out[f"t{i}_{k}"][deg] = np.where(trivial, 0.0, np.where(never, np.nan, est[k]))
        out[f"t{i}_mode"][deg] = est["mode"]
        out[f"theta{i}"][deg] = theta
    r = escape_rates(S, R, D)
    out["rate_subject"], out["rate_relation"] = r["subject"], r["relation"]
    out["hallucination_stage_exists"] = hallucination_stage_exists(S, R, D)
    return out
