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
    # past t3 (the run stops at its loss target): the flow is read at every GD evaluation
    flow = analyze_flow(FlowConfig(task=TASK, init="balanced", alpha=ALPHA, t_max=1e5, loss_target=1e-3),
                        progress=False)
    ph_flow = flow.phases
    assert None not in (ph_flow.t1, ph_flow.t2, ph_flow.t3) and ph_flow.plateau is not None
    steps = int(np.ceil(1.05 * ph_flow.t3 / LR))  # past the flow's t3
    run = train(TrainConfig(task=TASK, model="linear", optimizer="gd", lr=LR, steps=steps, init="balanced",
                            init_scale=ALPHA, eval_every=EVERY, device="cpu"), progress=False, task=task)
    h = run.history
    assert np.array_equal(h["flow_time"], h["step"] * LR)  # model 1's time axis
    at = [flow.run.metrics_at(float(t)) for t in h["flow_time"]]  # the same flow at the evaluations
    pairing = flow_gap(run, flow={k: np.array([m[k] for m in at]) for k in ("loss", "relation_loss")})
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


def test_staged_phases_of_gd_agree_with_the_exact_experiment():
    """Per stage and evaluation set (analysis.results.training.staged_phases against the flow experiment's
    analysis.results.experiment.analyze_experiment): the same levels (H_v(A|R) of each set in each stage), the
    same crossings reached and missed, and each time within g_k / |dL_v/dt| + dt / 4 as above, g_k the GD-flow
    difference of L_v at the bracketing evaluations and dL_v/dt the flow's slope (a central difference on its
    dense output)."""
    from analysis.results.experiment import analyze_experiment, set_loss_at
    from analysis.results.training import staged_phases
    from dynamics.experiment.schedule import ExperimentConfig, Stage, Stop
    from dynamics.training import train_schedule
    from models.weights import Distribution

    stages = (Stage("first", Distribution(subjects="0:4"), Stop(time=80.0)),
              Stage("all", Distribution(), Stop(time=250.0)))
    sets = ("all", "train", "unseen")
    flow = analyze_experiment(ExperimentConfig(flow=FlowConfig(task=TASK, init="balanced", alpha=ALPHA, t_max=1e4),
                                               stages=stages, eval_sets=sets), progress=False)
    res = train_schedule(TrainConfig(task=TASK, model="linear", optimizer="gd", lr=LR, steps=10**5, init="balanced",
                                     init_scale=ALPHA, eval_every=EVERY, device="cpu"), stages, eval_sets=sets)
    assert res.finished and [o.steps for o in res.stages] == [800, 2500]
    got, h, dt = staged_phases(res), res.history, EVERY * LR
    n_reached = 0
    for st in flow.run.stages:
        rows = np.flatnonzero(h["stage"] == st.index)
        t = h["flow_time"][rows]
        for name, want in flow.phases[st.name].items():
            have = got[st.name][name]
            for k in ("theta1", "theta2", "theta3"):
                assert (have[k] is None) == (want[k] is None) and (want[k] is None or
                                                                     have[k] == pytest.approx(want[k], abs=1e-12))
            for k in ("t1", "t2", "t3"):
                assert (have[k] is None) == (want[k] is None), (st.name, name, k)
                if want[k] is None:
                    continue
                n_reached += 1
                L = h["loss" if name == "train" else f"{name}_loss"][rows]
                j = max(int(np.searchsorted(t, have[k])), 1)  # evaluations j - 1, j bracket the GD crossing
                g_k = max(abs(L[i] - set_loss_at(flow.run, st, name, float(t[i]))) for i in (j - 1, j))
                e = 1e-3
                slope = abs(set_loss_at(flow.run, st, name, want[k] + e)
                            - set_loss_at(flow.run, st, name, want[k] - e)) / (2 * e)
                assert abs(have[k] - want[k]) <= g_k / slope + dt / 4, (st.name, name, k, have[k], want[k])
    assert n_reached == 8  # stage 1: t1, t2 on train; stage 2: t1, t2, t3 on train and on all
