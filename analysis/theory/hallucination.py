"""An alpha-aware prediction of the hallucination stage, for any fact weights and tables.

The stage is the plateau at ``H = H(A|R)`` where the model has learned which kind of answer each relation
asks for (relation-only loss near 0) but not which subject holds which answer: its prediction is the
relation-only predictor ``p(.|r)``. The old condition (``analysis.theory.modes.hallucination_stage_exists``:
the relation mode escapes before the subject mode, ``S^2 (R-1) > R^2 (D-1)`` for uniform data) says in
which order the modes leave the origin as ``alpha -> 0``; it does not say whether the stage can be seen at
a given alpha: the subjects start to escape ``log(1/alpha) (1/lambda_S - 1/lambda_R)`` after the relations,
a gap that is short when the two rates are close, while the relation-only loss only decays like 1/t.

**Criterion (visibility at level rho, default 0.1).** The stage is *visible* when at some time the
relation-only loss is at most ``rho H`` while the loss is still at least ``(1 - rho) H``:

    d = min_t max(relation_only(t), H - L(t)) <= rho H.

Both losses decrease along the flow, so the stage is the interval from the first time
``relation_only <= rho H`` to the first time ``L <= (1 - rho) H``; its length is the predicted
``duration`` (0 when not visible). ``relation_loss`` is the relation-only loss at ``t_end``, when the loss leaves
the band (the first time ``L <= (1 - rho) H``), whether the stage is visible or not (on a visible stage its
lowest value during the stage); ``None`` if the loss never leaves the band. Beside it, ``relation_loss_closest``
is the relation-only loss at ``t_closest``, the time of the minimum distance ``d`` (where the flow comes closest
to the band's corner; before or after ``t_end``). Justification: on the stage the loss equals
``H + KL(p(.|r) || p_hat)`` (exactly, while the prediction does not depend on the subject), so a loss
within ``rho H`` of H with the relation-only loss within ``rho H`` of 0 is a plateau at H that a plot of
the loss resolves to 10 %, reached by the relation-only predictor, not a loss passing H on its way down.

**How it is predicted.** Exactly where the two-mode reduction holds (uniform weights on structured or
balanced tables: the relation-only loss is the relation mode's loss ``L_R(b)`` and ``L = L_S + L_R``, both
from the quadratures of :mod:`analysis.theory.quadrature`), else on the exact flow reduced by the symmetries that
survive (:mod:`analysis.theory.lumped`) where that saves >= 4x, else on the full flow. Beside it, the
leading-order picture of :mod:`analysis.theory.staircase`: the modes' escape times for these weights give
``relations_first`` (every relation escapes before any subject: the generalised condition, per-relation
and per-subject frequencies included), the leading-order duration ``t_S - t_R`` and the e-folds of the
first subject's growth left when the last relation escapes; a stage with >= 1 e-fold is called visible
at leading order (calibrated on the uniform case, where 1 e-fold gives d = rho H with rho ~ 0.1).
"""
from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq

from analysis.theory.staircase import RESOLVED_EFOLDS, escape_schedule, pick_method

RHO = 0.1  # visibility: the loss within 10 % of H(A|R) while the relation-only loss is within 10 % of 0


def leading_order(task, weights, alpha: float, *, schedule: list | None = None) -> dict:
    """The leading-order view of the stage from the escape schedule (module docstring)."""
    sched = escape_schedule(task, weights, alpha) if schedule is None else schedule
    t_rel = t_sub = None
    k_rel = None
    for k, st in enumerate(sched):
        if any(m.startswith("s") for m in st.modes) and t_sub is None:
            t_sub = st.t
        if any(m.startswith("r") for m in st.modes):
            t_rel, k_rel = st.t, k
    first = t_rel is not None and (t_sub is None or t_rel < t_sub)
    efolds = 0.0
    if first and t_sub is not None:
        # e-folds the first subject still had to grow when the last relation escaped: sum the plateaus' e-folds
        # between those two escapes that belong to the growing subject (the schedule records the next mode's)
        efolds = sum(st.efolds for st in sched[k_rel:] if st.t < t_sub) if k_rel is not None else 0.0
    elif first:
        efolds = math.inf
    return dict(relations_first=bool(first), t_relations=t_rel, t_subjects=t_sub,
                duration=(t_sub - t_rel) if (first and t_sub is not None) else (math.inf if first else 0.0),
                efolds=float(efolds), visible=bool(first and efolds >= RESOLVED_EFOLDS))


def _stage(rel_at, loss_at, ts: np.ndarray, H: float, rho: float) -> dict:
    """Visibility, duration and relation-only loss of the stage from callables, bracketed on the times ``ts``
    (increasing; each first crossing is located by Brent's method between the grid points around it)."""
    rel = np.array([rel_at(t) for t in ts])
    los = np.array([loss_at(t) for t in ts])

    def first_below(f, vals, level):
        i = int(np.argmax(vals <= level)) if np.any(vals <= level) else None
        if i is None:
            return None
        if i == 0:
            return float(ts[0])
        a, b = float(ts[i - 1]), float(ts[i])
        return brentq(lambda t: f(t) - level, a, b, xtol=1e-13 * b, rtol=1e-15, maxiter=200)

    t_rel = first_below(rel_at, rel, rho * H)
    t_loss = first_below(loss_at, los, (1 - rho) * H)
    visible = t_rel is not None and t_loss is not None and t_rel <= t_loss
    # d = min_t max(rel, H - L) over the grid, refined where rel and H - L cross
    dd = np.maximum(rel, H - los)
    i = int(np.argmin(dd))
    d, t_d = float(dd[i]), float(ts[i])
    g = rel - (H - los)
    for j in (i - 1, i):
        if 0 <= j < len(ts) - 1 and g[j] > 0 >= g[j + 1]:
            t_d = brentq(lambda t: rel_at(t) - (H - loss_at(t)), float(ts[j]), float(ts[j + 1]),
                         xtol=1e-13 * float(ts[j + 1]), rtol=1e-15, maxiter=200)
            d = min(d, max(rel_at(t_d), H - loss_at(t_d)))
    return dict(visible=bool(visible), distance=float(d / H) if H > 0 else math.inf,
                t_start=t_rel, t_end=t_loss,
                duration=float(t_loss - t_rel) if visible else 0.0,
                relation_loss=None if t_loss is None else float(rel_at(t_loss)),
                t_closest=float(t_d), relation_loss_closest=float(rel_at(t_d)))


def hallucination(task, weights=None, alpha: float = 1e-5, *, rho: float = RHO, exact: bool = True,
                  flow_config=None, method: str = "auto", schedule: list | None = None) -> dict:
    """The hallucination stage at this alpha: a dict with ``visible``, ``duration`` (flow time), ``relation_loss``
    (nats, at ``t_end``: when the loss leaves the band), ``distance`` (d / H), ``H_A_given_R``, ``t_start``,
    ``t_end``, ``t_closest`` and ``relation_loss_closest`` (at the minimum distance), ``method`` and
    ``leading_order`` (module docstring).

    exact=False gives only the leading-order view (no integration); ``visible`` is then the leading-order one.
    method: ``auto`` (quadrature for uniform data, the symmetry-reduced flow for large flows it shrinks, else
    the full flow), ``quadrature``, ``reduced`` or ``full``; a ``flow_config`` means the full flow of it.
    schedule: this configuration's staircase.escape_schedule, when the caller has it already.
    """
    w = task.fact_weights if weights is None else np.asarray(weights, dtype=np.float64)
    if not 0 < rho < 1:
        raise ValueError(f"rho = {rho!r}: the visibility level must lie in (0, 1)")
    H = task.entropy_given_relation(w)
    lead = leading_order(task, w, alpha, schedule=schedule)
    if not H > 0:  # every relation determines its answer: there is no stage to see (D = 1, say)
        lead["visible"] = False
    out = dict(H_A_given_R=H, rho=rho, leading_order=lead)
    if not exact:
        out.update(visible=lead["visible"], duration=lead["duration"] if lead["visible"] else 0.0,
                   relation_loss=None, distance=None, t_start=None, t_end=None, t_closest=None,
                   relation_loss_closest=None, method="leading order")
        return out
    how = pick_method(task, w, flow_config, method)
    if how == "quadrature":
        from analysis.theory.modes import Modes
        from analysis.theory.reduced_solution import ReducedSolution

        sol = ReducedSolution(Modes(np.array([task.S], float), task.R, task.D, alpha))

        def st(t):
            return sol.state(np.array([t], float), warm=False)

        t_hi = float(sol.crossing_time(np.array([min(1e-3, 0.5 * (1 - rho) * H)]))[0])
        ts = np.concatenate([[0.0], np.geomspace(t_hi * 1e-4, t_hi, 400)])
        res = _stage(lambda t: float(st(t)["relation_loss"][0]), lambda t: float(st(t)["loss"][0]), ts, H, rho)
        res["method"] = "two-mode quadrature"
    elif how == "reduced":
        from analysis.theory.lumped import run_lumped

        sol, flow = run_lumped(task, w, alpha, loss_target=0.5 * (1 - rho) * H)
        cache = {}

        def m(t):
            if t not in cache:
                cache[t] = flow.metrics(sol(t))
            return cache[t]

        ts = np.concatenate([[0.0], np.geomspace(sol.t_final * 1e-4, sol.t_final, 400)])
        res = _stage(lambda t: m(t)["relation_loss"], lambda t: m(t)["loss"], ts, H, rho)
        res["method"] = "symmetry-reduced flow"
    else:
        import dataclasses

        from dynamics import FlowConfig, run_flow

        cfg = flow_config if flow_config is not None else FlowConfig(task=task.config, alpha=alpha)
        target = min(cfg.resolved_loss_target, 0.5 * (1 - rho) * H)
        run = run_flow(dataclasses.replace(cfg, loss_target=target))
        cache = {}

        def m(t):
            if t not in cache:
                cache[t] = run.metrics_at(t)
            return cache[t]

        ts = np.asarray(run.trajectory["t"], dtype=np.float64)  # the saved times bracket every crossing
        res = _stage(lambda t: m(t)["relation_loss"], lambda t: m(t)["loss"], ts, H, rho)
        res["method"] = "full flow"
    out.update(res)
    return out
