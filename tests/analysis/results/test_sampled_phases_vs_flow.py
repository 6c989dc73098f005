"""Phase detection on a sampled curve (analysis.phases.detect_phases, what every trainer's report uses) agrees
with the exact flow's (analysis.phases.flow_phases: event times on the dense output, the plateau by Brent's
method) on model 1 trained by full-batch GD at a small step, its time axis flow time = step * lr (SPEC §3, §5).

Reference: the exact flow (analysis.results.flow.analyze_flow, float64 ODE solver) from the same initialization.

Tolerance, derived rather than fitted. GD at step lr follows the flow up to O(lr): at the evaluations around a
crossing its loss differs from the flow's by at most g_k (the largest |L_GD - L_flow| of the two evaluations that
bracket the crossing). To first order in g_k the GD curve reaches a level g_k / |dL/dt| later or earlier than
the flow, dL/dt the flow's slope there; the crossing on the sampled curve is located between two evaluations
dt = eval_every * lr apart by a monotone cubic, whose error on a curve that is smooth on that scale is a small
fraction of dt (dt / 4 allowed). So |t_k(GD) - t_k(flow)| <= g_k / |dL/dt(t_k)| + dt / 4. (Measured on this task:
the differences are 0.24, 0.25, 0.08 against bounds 0.25 + 0.1, 0.25 + 0.1, 0.08 + 0.1.)
The plateau is the evaluation with the smallest |dL/d log t| (no interpolation): its time may be off by GD's
shift plus one spacing; its loss, on a flat stretch, by at most the flow gap.
"""
import numpy as np
import pytest

from analysis.phases import detect_phases
from analysis.results.flow import analyze_flow
from analysis.results.pairing import flow_gap
from analysis.results.training import summarize_training
from dynamics.flow.config import FlowConfig
from dynamics.training import TrainConfig, train
from models.task import TaskConfig, make_task

TASK = TaskConfig(S=8, R=2, D=4, T=7, N=3)  # many subjects per relation: the hallucination plateau at log D
ALPHA, LR, EVERY = 1e-2, 0.1, 4


def test_sampled_phases_of_gd_agree_with_the_exact_flow():
    task = make_task(TASK)
    flow = analyze_flow(FlowConfig(task=TASK, init="balanced", alpha=ALPHA, t_max=1e5), progress=False)
    ph_flow = flow.phases
    assert None not in (ph_flow.t1, ph_flow.t2, ph_flow.t3) and ph_flow.plateau is not None
    steps = int(np.ceil(1.05 * ph_flow.t3 / LR))  # past the flow's t3
    run = train(TrainConfig(task=TASK, model="linear", optimizer="gd", lr=LR, steps=steps, init="balanced",
                            init_scale=ALPHA, eval_every=EVERY, device="cpu"), progress=False, task=task)
    h = run.history
    assert np.array_equal(h["flow_time"], h["step"] * LR)  # model 1's time axis
    pairing = flow_gap(run)
    assert pairing["flow_gap"] <= 0.02
    ph = detect_phases(h["flow_time"], h["loss"], h["relation_loss"], h["subject_loss"], h["hallucination_gap"],
                       log_A=task.log_A, H_A_given_R=task.H_A_given_R)
    assert (ph.theta1, ph.theta2, ph.theta3) == (ph_flow.theta1, ph_flow.theta2, ph_flow.theta3)
    dt = EVERY * LR
    tr = flow.trajectory
    for name in ("t1", "t2", "t3"):
        t_gd, t_fl = getattr(ph, name), getattr(ph_flow, name)
        assert t_gd is not None, name
        k = int(np.searchsorted(h["flow_time"], t_gd))  # the evaluations k - 1, k bracket the GD crossing
        g_k = max(pairing["gap"][k - 1], pairing["gap"][k])
        slope = abs(np.interp(t_fl, tr["t"], tr["dloss_dt"]))  # the flow's |dL/dt| at its crossing
        assert abs(t_gd - t_fl) <= g_k / slope + dt / 4, (name, t_gd, t_fl, g_k / slope)
    p, q = ph.plateau, ph_flow.plateau
    shift = max(abs(ph.t1 - ph_flow.t1), abs(ph.t2 - ph_flow.t2))
    assert abs(p.t - q.t) <= shift + dt
    assert p.loss == pytest.approx(q.loss, abs=pairing["flow_gap"])
    rel_gap = np.max(np.abs(h["relation_loss"] - pairing["flow"]["relation_loss"]))
    assert p.relation_loss == pytest.approx(q.relation_loss, abs=rel_gap)
    summary = summarize_training(run, pairing)  # the report: the same phases, in flow time, and converged
    assert summary["phases"]["flow_time"]["t3"] == pytest.approx(ph.t3, rel=1e-12)
    assert summary["converged"] is True and np.min(h["loss"]) <= 0.01
