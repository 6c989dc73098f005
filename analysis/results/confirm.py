"""Confirmation report for model 2 (issue 4): does the softmax head show the stages of SPEC §3?

Every entry is computed from a training history (column -> (n_eval,) array with ``step`` and the
metrics of SPEC §3), so changing the history changes the verdicts. Time is in steps.

Claims and tolerances (absolute, in nats):
- ``first_plateau``: the loss on the first plateau (the evaluation in (0, t1] where |dL/d log step|
  is smallest) lies within 0.05 of log|A|, and the run leaves it (t1 reached);
- ``second_plateau``: the loss on the second plateau (smallest |dL/d log step| in [t1, t2], or
  [t1, end] when t2 is not reached) lies within 0.15 of log D (= H(A|R) for these tables), with the
  relation-only loss <= 0.15 and the subject-only loss >= 0.8 log D at that same evaluation;
- ``hallucination_gap``: on that plateau the prediction is close to the relation-only predictor,
  KL(p(.|r) || p_hat) <= 0.15;
- ``convergence``: the loss reaches eps_conv (t3 reached); reports the step and the final loss.
"""
from __future__ import annotations

import numpy as np

from analysis.phases import detect_phases, plateau_index

TOL_FIRST = 0.05
TOL_SECOND = 0.15
TOL_RELATION = 0.15
SUBJECT_FRACTION = 0.8
TOL_GAP = 0.15


def _row(history: dict, k: int) -> dict:
    return {c: float(history[c][k]) for c in ("step", "loss", "relation_loss", "subject_loss",
                                              "hallucination_gap", "accuracy")}


def confirmation_report(history: dict, *, log_A: float, H_A_given_R: float, eps_conv: float = 1e-2) -> dict:
    """One entry per claim: the measured numbers, the tolerance and ``confirmed`` (bool).

    history: ``step``, ``loss``, ``relation_loss``, ``subject_loss``, ``hallucination_gap``,
    ``accuracy`` as (n,) arrays with increasing steps. log_A = log|A|; H_A_given_R = H(A|R) (log D for
    balanced/structured tables with uniform subjects).
    """
    log_D = float(H_A_given_R)
    t = np.asarray(history["step"], dtype=np.float64)
    L = np.asarray(history["loss"], dtype=np.float64)
    ph = detect_phases(t, L, history["relation_loss"], history["subject_loss"], history["hallucination_gap"],
                       log_A=log_A, H_A_given_R=log_D, eps_conv=eps_conv)
    rep = {"phases": ph.to_dict()}

    # first plateau: between the first positive step and t1
    k1 = None
    if ph.t1 is not None:
        k1 = plateau_index(t, L, float(t[t > 0][0]) if np.any(t > 0) else 0.0, ph.t1)
    if k1 is None:
        rep["first_plateau"] = dict(confirmed=False, reason="the loss never left log|A| (t1 not reached)"
                                    if ph.t1 is None else "no evaluation before t1", log_A=log_A,
                                    tolerance=TOL_FIRST, t1=ph.t1)
    else:
        r = _row(history, k1)
        dev = abs(r["loss"] - log_A)
        rep["first_plateau"] = dict(confirmed=bool(dev <= TOL_FIRST), step=r["step"], loss=r["loss"],
                                    log_A=log_A, deviation=dev, tolerance=TOL_FIRST, t1=ph.t1)

    # second plateau: between t1 and t2 (or the end of the run)
    k2 = None
    if ph.t1 is not None:
        k2 = plateau_index(t, L, ph.t1, ph.t2 if ph.t2 is not None else float(t[-1]))
    if k2 is None:
        rep["second_plateau"] = dict(confirmed=False, reason="t1 not reached or no evaluation after it",
                                     log_D=log_D, tolerance=TOL_SECOND)
        rep["hallucination_gap"] = dict(confirmed=False, reason="no second plateau", tolerance=TOL_GAP)
    else:
        r = _row(history, k2)
        dev = abs(r["loss"] - log_D)
        ok_loss = dev <= TOL_SECOND
        ok_rel = r["relation_loss"] <= TOL_RELATION
        ok_subj = r["subject_loss"] >= SUBJECT_FRACTION * log_D
        rep["second_plateau"] = dict(
            confirmed=bool(ok_loss and ok_rel and ok_subj), step=r["step"], loss=r["loss"], log_D=log_D,
            deviation=dev, tolerance=TOL_SECOND, relation_loss=r["relation_loss"],
            relation_loss_max=TOL_RELATION, subject_loss=r["subject_loss"],
            subject_loss_min=SUBJECT_FRACTION * log_D, t1=ph.t1, t2=ph.t2,
            checks=dict(loss_near_log_D=bool(ok_loss), relation_loss_small=bool(ok_rel),
                        subject_loss_high=bool(ok_subj)))
        rep["hallucination_gap"] = dict(confirmed=bool(r["hallucination_gap"] <= TOL_GAP), step=r["step"],
                                        hallucination_gap=r["hallucination_gap"], tolerance=TOL_GAP)

    reached = ph.t3 is not None
    rep["convergence"] = dict(confirmed=bool(reached), eps_conv=eps_conv, step=ph.t3,
                              final_loss=float(L[-1]), final_step=float(t[-1]),
                              final_accuracy=float(history["accuracy"][-1]))
    rep["all_confirmed"] = bool(all(rep[k]["confirmed"] for k in ("first_plateau", "second_plateau",
                                                                   "hallucination_gap", "convergence")))
    return rep


__all__ = ["confirmation_report", "TOL_FIRST", "TOL_SECOND", "TOL_RELATION", "SUBJECT_FRACTION", "TOL_GAP"]

