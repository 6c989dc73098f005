"""Batched exact flows (dynamics.flow.batched) against single runs of dynamics.flow.solve.run_flow."""
import math

import pytest

from analysis.phases import batched_plateau, flow_plateau, thresholds
from common.errors import ConfigError
from dynamics.flow.batched import run_flows_batched
from dynamics.flow.config import FlowConfig
from dynamics.flow.solve import run_flow
from models.task import TaskConfig, make_task


def random_config(seed=0, **kw):
    task_kw = {k: kw.pop(k) for k in ("zipf_subjects", "zipf_relations", "S") if k in kw}
    return FlowConfig(task=TaskConfig(**dict(dict(S=16, R=4, D=8, facts="random", seed=seed), **task_kw)), **kw)


def single(config):
    task = make_task(config.task)
    levels = thresholds(task.log_A, task.H_A_given_R, config.eps_conv)
    run = run_flow(config, levels=levels)
    out = dict(zip(("t1", "t2", "t3"), (run.crossings[x] for x in levels)), status=run.status,
               n_steps=run.solver["n_steps"], nfe=run.solver["nfe"], n_rejected=run.solver["n_rejected"])
    if out["t1"] is not None and out["t2"] is not None:
        out["plateau"] = flow_plateau(run, out["t1"], out["t2"])  # bracketed by the saved samples
    return out


def rel(a, b):
    if a is None or b is None:
        return 0.0 if a is b else math.inf
    return abs(a - b) / abs(b)


CONFIGS = ([random_config(s) for s in range(8)]  # 8 random tables
           + [random_config(0, alpha=a) for a in (1e-6, 1e-4, 1e-3)]  # a grid of alpha
           + [random_config(3, zipf_subjects=1.0)])  # Zipf frequencies


@pytest.fixture(scope="module")
def batched():
    return run_flows_batched(CONFIGS, plateau=True)


# the fast suite checks a random table, the smallest and largest alpha and the Zipf run; the rest are slow
FAST = (0, 8, 10, 11)


@pytest.mark.parametrize("i", [i if i in FAST else pytest.param(i, marks=pytest.mark.slow) for i in range(len(CONFIGS))])
def test_batched_equals_single_run(batched, i):
    b, s = batched[i], single(CONFIGS[i])
    assert b["status"] == s["status"] == "converged"
    for k in ("t1", "t2", "t3"):
        assert rel(b[k], s[k]) <= 1e-9, (k, b[k], s[k])
    # the same steps as the single run: per-run step control mirrors dynamics.ode.dopri5
    assert (b["n_steps"], b["n_rejected"], b["nfe"]) == (s["n_steps"], s["n_rejected"], s["nfe"])
    assert b["final_loss"] <= CONFIGS[i].eps_conv
    # the plateau (SPEC §3) from the run's window of steps: bracketed by step ends, not saved samples, the same
    # minimiser of |t dL/dt| on the same interpolants
    p = flow_plateau(b["plateau_window"], b["t1"], b["t2"])
    assert s["plateau"].t < b["t2"] and rel(p.t, s["plateau"].t) <= 1e-9, (p.t, s["plateau"].t)
    for k in ("loss", "relation_loss", "subject_loss", "hallucination_gap"):
        assert abs(getattr(p, k) - getattr(s["plateau"], k)) <= 1e-9 * max(1.0, abs(getattr(s["plateau"], k))), k


@pytest.mark.slow
def test_runs_that_finish_early_leave_the_batch(batched):
    early_target = random_config(5, loss_target=2.0)  # stops after t1, long before the others
    early_budget = random_config(6, max_steps=40)  # runs out of steps
    out = run_flows_batched([CONFIGS[0], early_target, CONFIGS[1], early_budget, CONFIGS[2]])
    assert out[1]["status"] == "converged" and out[1]["t_final"] < out[0]["t1"] * 3
    assert out[1]["final_loss"] <= 2.0 and out[1]["t2"] is None
    assert out[3]["status"] == "max_steps" and out[3]["n_steps"] == 40 and out[3]["t1"] is None
    for j, i in ((0, 0), (2, 1), (4, 2)):  # the others are unaffected
        for k in ("t1", "t2", "t3", "n_steps", "nfe"):
            assert rel(out[j][k], batched[i][k]) <= 1e-12, (j, k)
    s = single(early_target)
    assert rel(out[1]["t1"], s["t1"]) <= 1e-9 and out[1]["n_steps"] == s["n_steps"]


def test_mismatched_configs_are_refused():
    with pytest.raises(ConfigError, match="one shape"):
        run_flows_batched([random_config(0), random_config(0, S=8)])
    with pytest.raises(ConfigError, match="solver setting"):
        run_flows_batched([random_config(0), random_config(0, rtol=1e-8)])
    with pytest.raises(ConfigError, match="dopri5"):
        run_flows_batched([random_config(0, backend="torchdiffeq")])
    with pytest.raises(ConfigError):
        run_flows_batched([])
    for bad in ([random_config(0), random_config(0, S=8)], [random_config(0), random_config(0, rtol=1e-8)]):
        try:
            run_flows_batched(bad)
        except ConfigError as exc:
            assert "\n" not in str(exc)


def test_batch_memory_estimate_counts_the_shared_chunks_once():
    """A batch holds one run's direct-path chunks and work arrays plus every run's state rows: 128 small flows need
    far less than 128 runs' own estimates (which each count ~100 MB of chunks), and more runs cost more."""
    from dynamics.flow.batched import batch_memory_estimate_bytes

    one = FlowConfig(task=TaskConfig(S=16, R=4, D=8, facts="random", seed=0))
    many = [FlowConfig(task=TaskConfig(S=16, R=4, D=8, facts="random", seed=s)) for s in range(128)]
    single = one.memory_estimate_bytes()
    est = batch_memory_estimate_bytes(many)
    assert single < est < single + 128 * 2**20 < 128 * single
    P = one.state_size()
    assert batch_memory_estimate_bytes(many[:64]) - batch_memory_estimate_bytes(many[:32]) >= 32 * 15 * 8 * P


@pytest.mark.slow
def test_slots_refill_the_batch_and_change_nothing(batched, monkeypatch):
    """Continuous batching: with slots=3 at most three runs are integrated at once, a waiting run starting as one
    finishes (here also one stopped early by its target and one by its step budget); every run takes the same
    steps and phase times as in the all-at-once batch, and on_done reports each run once, as it finishes."""
    import dynamics.flow.batched as mod

    widths = []
    rhs = mod.BatchedObjective.rhs
    monkeypatch.setattr(mod.BatchedObjective, "rhs",
                        lambda self, Y, out, need_loss=False: (widths.append(Y.shape[0]), rhs(self, Y, out, need_loss))[1])
    extra = [random_config(5, loss_target=2.0), random_config(6, max_steps=40)]
    configs = [CONFIGS[0], extra[0], *CONFIGS[1:6], extra[1], *CONFIGS[6:]]
    seen = []
    out = run_flows_batched(configs, slots=3, on_done=lambda i, r: seen.append((i, r["status"])), plateau=True)
    assert max(widths) == 3 and widths.count(3) > len(widths) // 2  # full most of the time
    assert sorted(i for i, _ in seen) == list(range(len(configs)))
    assert dict(seen) == {i: r["status"] for i, r in enumerate(out)}
    ref = batched[:1] + [None] + batched[1:6] + [None] + batched[6:]
    for o, r in zip(out, ref):
        if r is not None:
            assert (o["n_steps"], o["nfe"], o["n_rejected"]) == (r["n_steps"], r["nfe"], r["n_rejected"])
            assert all(rel(o[k], r[k]) <= 1e-12 for k in ("t1", "t2", "t3"))
    assert out[1]["status"] == "converged" and out[1]["final_loss"] <= 2.0
    assert out[7]["status"] == "max_steps" and out[7]["n_steps"] == 40
    # plateau windows survive slot reuse: the same plateau as in the all-at-once batch; none without t2
    assert batched_plateau(out[1]) is None and batched_plateau(out[7]) is None and "plateau_window" not in out[1]
    for o, r in zip(out, ref):
        if r is not None:
            p, q = batched_plateau(o), flow_plateau(r["plateau_window"], r["t1"], r["t2"])
            assert rel(p.t, q.t) <= 1e-12 and rel(p.loss, q.loss) <= 1e-12


def test_slots_are_checked_and_bound_the_memory_estimate():
    from dynamics.flow.batched import batch_memory_estimate_bytes

    with pytest.raises(ConfigError, match=r"slots = 0 is too small"):
        run_flows_batched([random_config(0)], slots=0)
    many = [random_config(s) for s in range(64)]
    full = batch_memory_estimate_bytes(many)
    assert batch_memory_estimate_bytes(many, slots=64) == batch_memory_estimate_bytes(many, slots=1000) == full
    P = many[0].state_size()
    # 48 runs fewer in the batch: at least their 7 stages of (P,) doubles fewer
    assert full - batch_memory_estimate_bytes(many, slots=16) >= 48 * 7 * 8 * P


@pytest.mark.slow
def test_plateau_window_when_t1_and_t2_fall_in_one_step(monkeypatch):
    """With theta2 just below theta1 both crossings fall inside one step: the window is that step alone (no step
    end lies in [t1, t2]) and the plateau is located on it as the single run locates it on its dense output."""
    import dynamics.flow.batched as mod

    config = random_config(2)
    task = make_task(config.task)
    th1 = 0.5 * (task.log_A + task.H_A_given_R)
    levels = (th1, th1 * (1 - 1e-9), config.eps_conv)
    monkeypatch.setattr(mod, "_phase_levels", lambda task, eps: levels)
    out = run_flows_batched([config], plateau=True)[0]
    w = out["plateau_window"]
    assert len(w.trajectory["t"]) == 2 and w.trajectory["t"][0] < out["t1"] < out["t2"] < w.trajectory["t"][1]
    run = run_flow(config, levels=levels)
    t1, t2 = run.crossings[levels[0]], run.crossings[levels[1]]
    assert rel(out["t1"], t1) <= 1e-12 and rel(out["t2"], t2) <= 1e-12
    p, q = batched_plateau(out), flow_plateau(run, t1, t2)
    assert out["t1"] <= p.t <= out["t2"] and rel(p.t, q.t) <= 1e-9 and rel(p.loss, q.loss) <= 1e-12
