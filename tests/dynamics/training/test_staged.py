"""Multi-stage schedules drive the trainers (SPEC §5, §6): the weighted sampler, GD / SGD / Adam through
dynamics.training.staged.train_schedule, and the pairing of a model-1 schedule with the exact multi-stage flow.

References: the weights themselves (sampler frequencies, 4 standard errors per fact); an unweighted
TaskSampler on the same seed (product path unchanged); PopulationObjective under v for the weighted held-out
evaluator; an independent two-piece integration with torchdiffeq (dopri5, rtol 1e-12) of
PopulationObjective(w_k).flow_rhs for the two-stage flow; the one-stage GD gap at the same lr; a plain
(one-stage) GD run for the loss stop rule.
"""
import math

import numpy as np
import pytest
import torch

from analysis.results.pairing import flow_gap, schedule_flow_gap
from common.errors import ConfigError
from dynamics.experiment.schedule import EvalSpec, Stage, Stop
from dynamics.training import HeldOutEvaluator, SampledTrainer, ScheduleResult, TrainConfig, train, train_schedule
from models.linear import expand, init_linear
from models.modules import LinearAttentionModel
from models.population import PopulationObjective
from models.sampler import TaskSampler
from models.task import TaskConfig, make_task
from models.weights import Distribution


def assert_frequencies(s, r, w, n):
    """Empirical (s, r) frequencies within 4 binomial standard errors of w, per fact; zero-weight facts never."""
    S, R = w.shape
    c = np.bincount(np.asarray(s) * R + np.asarray(r), minlength=S * R).reshape(S, R)
    assert c.sum() == n
    assert np.all(c[w == 0] == 0)
    se = np.sqrt(w * (1 - w) / n)
    z = np.abs(c / n - w) / np.where(se > 0, se, 1.0)
    assert np.all(z[w > 0] <= 4.0), (z.max(), np.unravel_index(np.argmax(z), z.shape))


# ----------------------------------------------------------------------------- (a) the weighted sampler
TASK_A = TaskConfig(S=6, R=3, D=3, T=7, N=4, facts="random", zipf_subjects=1.0, seed=2)
_rng = np.random.default_rng(0)
WEIGHTS_A = {
    "random": Distribution(weights=_rng.dirichlet(np.ones(18)).reshape(6, 3)),
    "subset": Distribution(subjects=[1, 4], relations="0:2"),  # trailing facts (subject 5) have weight 0
    "mixture": Distribution(mix=((0.9, Distribution(subjects="3:6")), (0.1, Distribution(zipf_subjects=2.0)))),
}


@pytest.mark.parametrize("kind", sorted(WEIGHTS_A))
def test_weighted_sampler_draws_facts_from_w(kind):
    task = make_task(TASK_A)
    w = WEIGHTS_A[kind].resolve(task)
    n = 120_000
    b = TaskSampler(task, seed=4, weights=w).sample(n)
    assert_frequencies(b.s.numpy(), b.r.numpy(), w, n)
    tok = b.tokens.numpy()  # the rest of the sequence as SPEC §1: s and S + r in the body, EOS last
    assert np.all(tok[:, -1] == task.eos)
    assert np.all((tok[:, :-1] == b.s.numpy()[:, None]).sum(1) == 1)
    assert np.all((tok[:, :-1] == task.S + b.r.numpy()[:, None]).sum(1) == 1)
    assert np.array_equal(b.targets.numpy(), task.answers[b.s.numpy(), b.r.numpy()])
    s, r, y, counts = TaskSampler(task, seed=5, weights=w).sample_counts(n)
    assert_frequencies(s.numpy(), r.numpy(), w, n)
    assert np.array_equal(y.numpy(), task.answers[s.numpy(), r.numpy()])
    assert np.all(counts.numpy().sum(1) == task.T - 3)


def test_set_weights_switches_without_resetting_the_generator():
    task = make_task(TASK_A)
    w1, w2 = WEIGHTS_A["subset"].resolve(task), WEIGHTS_A["mixture"].resolve(task)
    sp = TaskSampler(task, seed=9, weights=w1)
    first = sp.sample(50_000)
    assert_frequencies(first.s.numpy(), first.r.numpy(), w1, 50_000)
    state = sp.generator.get_state()
    sp.set_weights(w2)
    assert torch.equal(sp.generator.get_state(), state)  # the switch draws nothing and resets nothing
    second = sp.sample(80_000)
    assert_frequencies(second.s.numpy(), second.r.numpy(), w2, 80_000)
    # the same draws as a sampler that had w2 from the start and reached the same generator state
    other = TaskSampler(task, seed=0, weights=w2)
    other.generator.set_state(state)
    assert torch.equal(other.sample(80_000).tokens, second.tokens)


def test_product_path_unchanged_without_weights():
    """No weights (or weights set back to None): bit for bit the unweighted sampler on the same seed,
    both for uniform p, q (randint path) and Zipf p (inverse-CDF path)."""
    for cfg in (TaskConfig(S=8, R=3, D=4, T=7, N=5), TASK_A):
        task = make_task(cfg)
        ref = TaskSampler(task, seed=13)
        a = TaskSampler(task, seed=13, weights=None)
        b = TaskSampler(task, seed=13, weights=np.ones((task.S, task.R)) / (task.S * task.R))
        b.set_weights(None)
        for sp in (a, b):
            assert sp.cdf_w is None
        x, y, z = ref.sample(4096), a.sample(4096), b.sample(4096)
        assert torch.equal(x.tokens, y.tokens) and torch.equal(x.tokens, z.tokens)
        xc, yc, zc = ref.sample_counts(4096), a.sample_counts(4096), b.sample_counts(4096)
        for u, v, t in zip(xc, yc, zc):
            assert torch.equal(u, v) and torch.equal(u, t)
    with pytest.raises(ValueError, match="shape"):
        TaskSampler(task, weights=np.ones((2, 2)))


def test_weighted_heldout_evaluator_matches_exact_metrics_under_v():
    """The held-out evaluator on sequences drawn from v (the sampled trainers' stop-rule measure) estimates
    the exact population metrics under v (4 standard errors)."""
    task = make_task(TaskConfig(S=8, R=3, D=4, T=7, N=5, facts="random", seed=1))
    v = Distribution(subjects="2:6", zipf_relations=1.0).resolve(task)
    rng = np.random.default_rng(1)
    C, A = task.S + task.R + 2, task.num_answers
    Wt, K = rng.normal(size=(C, A)) * 0.8, rng.normal(size=C) * 0.8 + 0.5
    exact = PopulationObjective(task, weights=v).metrics(torch.as_tensor(Wt), torch.as_tensor(K))
    W, Kf = expand(task, Wt, K)
    m = LinearAttentionModel(task, dtype=torch.float32)
    with torch.no_grad():
        m.W.copy_(torch.as_tensor(W))
        m.K.copy_(torch.as_tensor(Kf))
    n = 1 << 16
    ev = HeldOutEvaluator(task, n, "cpu", seed=3, weights=v)
    assert np.all(v[ev.batch.s.numpy(), ev.batch.r.numpy()] > 0)
    got = ev(m)
    with torch.no_grad():
        logp = torch.log_softmax(m(ev.batch.tokens).double(), 1)
    se = float((-logp.gather(1, ev.batch.targets[:, None])[:, 0]).std()) / math.sqrt(n)
    for k in ("loss", "relation_loss", "subject_loss", "hallucination_gap"):
        assert abs(got[k] - exact[k]) <= 4 * se + 1e-4, (k, got[k], exact[k], se)


# ----------------------------------------------------------------------------- (b) GD tracks the 2-stage flow
TASK_B = TaskConfig(S=16, R=4, D=8, facts="balanced")
STAGES_B = (Stage("first_half", Distribution(subjects="0:8"), Stop(time=150.0)),
            Stage("everything", Distribution(), Stop(time=300.0)))


def gd_config(lr, steps, eval_every):
    return TrainConfig(task=TASK_B, model="linear", optimizer="gd", lr=lr, steps=steps, init="balanced",
                       init_scale=1e-2, eval_every=eval_every, device="cpu")


@pytest.mark.slow
def test_gd_two_stage_schedule_tracks_the_exact_two_stage_flow():
    """GD at lr 0.1 (balanced init 1e-2, S16/R4/D8): stage 1 on subjects 0..7 for flow time 150 (1500 steps),
    stage 2 on all subjects for 300 (3000 steps). The schedule's flow_gap is of the order of the one-stage GD
    gap over the same flow time (<= 3x; both are the O(lr) error of a first-order method, measured here at
    ~0.015) and below 0.05 (test_gd_flow_gap_shrinks_linearly_with_lr: gap < 0.1 at lr 0.25 from 1e-5, so
    ~0.04 at lr 0.1); stage 2 on its own too, so the pairing is right after the switch. The flow it pairs with
    is checked against an independent two-piece torchdiffeq integration (the same flow_gap to 1e-8)."""
    task = make_task(TASK_B)
    res = train_schedule(gd_config(0.1, 10_000, 20), STAGES_B, eval_sets=("train", "all"), task=task)
    assert isinstance(res, ScheduleResult) and res.status == "completed"
    assert [(o.step_start, o.step_end, o.reason) for o in res.stages] == [(0, 1500, "time"), (1500, 4500, "time")]
    g = schedule_flow_gap(res)
    one = flow_gap(train(gd_config(0.1, 4500, 20), progress=False, task=task))["flow_gap"]
    h = res.history
    late = h["stage"] == 1
    gap2 = float(np.max(g["gap"][late]))
    assert g["flow_gap"] <= 3 * one and g["flow_gap"] < 0.05, (g["flow_gap"], one)
    assert gap2 <= 3 * one, (gap2, one)
    # the experiment really has two regimes: stage 1 leaves subjects 8..15 unlearned, stage 2 learns them
    i_end1 = np.flatnonzero((h["stage"] == 0) & (h["step"] == 1500))[0]
    assert h["loss"][i_end1] < 0.5 * h["all_loss"][i_end1]
    assert h["all_loss"][-1] == pytest.approx(h["loss"][-1], abs=1e-12) and h["loss"][-1] < 0.1
    # independent reference for the flow: two dopri5 integrations, the state carried over at t = 150
    from torchdiffeq import odeint

    w1, w2 = (st.train.resolve(task) for st in STAGES_B)
    objs = [PopulationObjective(task, weights=w) for w in (w1, w2)]
    y = objs[0].layout.pack(*init_linear(task, "balanced", 1e-2))
    L_ref = np.empty(len(h["step"]))
    with torch.inference_mode():
        for k, (lo, hi) in enumerate(((0.0, 150.0), (150.0, 450.0))):
            rows = np.flatnonzero(h["stage"] == k)
            grid = np.unique(np.concatenate([[lo], h["flow_time"][rows], [hi]]))  # rows hold both ends
            ys = odeint(lambda t, yy, o=objs[k]: o.flow_rhs(yy), y, torch.as_tensor(grid), rtol=1e-12, atol=1e-20,
                        method="dopri5")
            L = np.array([float(objs[k].loss(*objs[k].layout.unpack(yy))) for yy in ys])
            L_ref[rows] = L[np.searchsorted(grid, h["flow_time"][rows])]
            y = ys[-1]
    assert g["flow_gap"] == pytest.approx(float(np.max(np.abs(h["loss"] - L_ref))), abs=1e-8)
    assert np.allclose(g["flow_loss"], L_ref, rtol=0, atol=1e-8)


@pytest.mark.slow
def test_gd_schedule_gap_is_first_order_in_lr():
    """Halving lr (0.2 -> 0.1, same stages, same flow times) halves the schedule's flow_gap, overall and over
    stage 2 alone (ratios in [1.7, 2.3]; measured 2.00): the remaining gap is GD's discretisation error, not a misplaced stage switch (a switch at a
    wrong flow time would leave a gap that does not shrink with lr)."""
    task = make_task(TASK_B)
    gaps, gaps2 = [], []
    for lr in (0.2, 0.1):
        res = train_schedule(gd_config(lr, 10_000, int(round(4.0 / lr))), STAGES_B, task=task)
        g = schedule_flow_gap(res)
        gaps.append(g["flow_gap"])
        gaps2.append(float(np.max(g["gap"][res.history["stage"] == 1])))  # after the switch only
    assert 1.7 <= gaps[0] / gaps[1] <= 2.3, gaps
    assert 1.7 <= gaps2[0] / gaps2[1] <= 2.3, gaps2


# ----------------------------------------------------------------------------- (c) boundaries and switching
def test_sgd_stage_boundaries_and_sampler_switch(monkeypatch):
    """SGD of model 1: stage 1 on subjects 0..7 for 2.5 time units (25 steps at lr 0.1), stage 2 on all for
    10 (100 steps, capped at steps = 40: reason "steps"). Rows at each stage's start, every eval_every = 10
    steps counted from it and its end; every batch of stage 1 has s < 8, stage 2's batches are uniform over
    the 16 subjects (4 standard errors)."""
    drawn = []
    orig = TaskSampler.sample_counts

    def spy(self, n, generator=None):
        out = orig(self, n, generator)
        drawn.append(out[0].clone())
        return out

    monkeypatch.setattr(TaskSampler, "sample_counts", spy)
    tc = TaskConfig(S=16, R=2, D=4, T=8, N=5)
    cfg = TrainConfig(task=tc, model="linear", optimizer="sgd", lr=0.1, batch=512, steps=40, eval_every=10,
                      init="uniform", init_scale=1e-3, device="cpu", seed=3)
    stages = (Stage("a", Distribution(subjects="0:8"), Stop(time=2.5)), Stage("b", Distribution(), Stop(time=10.0)))
    res = train_schedule(cfg, stages, eval_sets=("all", "train"))
    assert [(o.name, o.step_start, o.step_end, o.reason) for o in res.stages] == \
        [("a", 0, 25, "time"), ("b", 25, 65, "steps")]
    h = res.history
    assert list(zip(h["stage"].astype(int), h["step"].astype(int))) == \
        [(0, 0), (0, 10), (0, 20), (0, 25), (1, 25), (1, 35), (1, 45), (1, 55), (1, 65)]
    assert np.allclose(h["flow_time"], h["step"] * 0.1)
    assert np.isnan(h["train_loss"][4]) and np.isfinite(h["train_loss"][5])  # no steps between the boundary rows
    assert res.eval_sets == ("train", "all")
    # the "train" set follows the stage, "all" does not: at the boundary they differ, then agree in stage 2
    i = 3
    assert h["all_loss"][i] == h["all_loss"][i + 1] and h["loss"][i] != h["loss"][i + 1]
    assert len(drawn) == 65
    s1, s2 = torch.cat(drawn[:25]).numpy(), torch.cat(drawn[25:]).numpy()
    assert s1.max() < 8 and s1.min() >= 0
    c = np.bincount(s2, minlength=16)
    n = s2.size
    assert np.all(np.abs(c / n - 1 / 16) <= 4 * math.sqrt((1 / 16) * (15 / 16) / n))


def test_adam_schedule_carries_model_and_optimizer_state():
    """Model 2 (Adam) through two stages: one model and one Adam state across the switch (same objects,
    step count continuing), seeded (two runs identical), and the second stage's rows measured on its own
    weights (train) besides the fixed set (all)."""
    tc = TaskConfig(S=8, R=2, D=4, T=8, N=5)
    cfg = TrainConfig(task=tc, model="softmax", optimizer="adam", lr=1e-2, batch=128, steps=30, eval_every=10,
                      init_scale=1e-2, d=16, device="cpu", seed=1)
    # model 2 has no flow time: until_time counts optimizer steps
    stages = (Stage("a", Distribution(subjects="0:4"), Stop(time=20)), Stage("b", Distribution(), Stop(time=30)))
    a = train_schedule(cfg, stages, eval_sets=("all",))
    b = train_schedule(cfg, stages, eval_sets=("all",))
    for k in a.history:
        assert np.array_equal(a.history[k], b.history[k], equal_nan=True), k
    assert [(o.step_start, o.step_end, o.reason) for o in a.stages] == [(0, 20, "time"), (20, 50, "time")]
    # reference: one trainer stepped by hand, its sampler switched after 20 steps; a fresh Adam at the switch
    # (the state not carried) ends elsewhere
    task = make_task(tc)
    w1, w2 = (st.train.resolve(task) for st in stages)
    ref = SampledTrainer(cfg, task, weights=w1)
    for _ in range(20):
        ref.step()
    fresh = torch.optim.Adam(ref.params, lr=cfg.lr)
    ref.set_weights(w2)
    snapshot = [p.detach().clone() for p in ref.params]
    for _ in range(30):
        ref.step()
    for p, q in zip(a.model.parameters(), ref.params):
        assert torch.equal(p, q)
    with torch.no_grad():
        for p, q in zip(ref.params, snapshot):
            p.copy_(q)
    ref.adam = fresh
    for _ in range(30):
        ref.step()
    assert not all(torch.equal(p, q) for p, q in zip(a.model.parameters(), ref.params))
    assert "flow_time" not in a.history
    with pytest.raises(ConfigError, match="linear"):
        schedule_flow_gap(a)


# ----------------------------------------------------------------------------- (d) stop by loss
@pytest.mark.slow
def test_gd_stop_by_loss_at_first_evaluation_at_or_below_the_level():
    """Stage 1 (the task's own p q) stops by loss 1.0 on train: at the first evaluation (every 30 steps) of a
    plain GD run on the same objective whose loss is <= 1.0; then stage 2 trains on subjects 8..15. A loss
    level already met at a stage's start ends it there (0 steps, as the flow's event at t0)."""
    task = make_task(TASK_B)
    cfg = gd_config(0.5, 2000, 30)
    plain = train(cfg, progress=False, task=task).history
    k = int(np.flatnonzero(plain["loss"] <= 1.0)[0])
    assert 0 < k < len(plain["step"]) - 1
    stages = (Stage("p", Distribution(), Stop(loss=1.0)),
              Stage("q", Distribution(subjects="8:16"), Stop(time=30.0, loss=0.3, on="half")),
              Stage("r", Distribution(), Stop(loss=100.0)))
    half = EvalSpec("half", Distribution(subjects="8:16"))
    res = train_schedule(cfg, stages, eval_sets=("all", half), task=task)
    o = res.stages
    assert (o[0].step_end, o[0].reason) == (int(plain["step"][k]), "loss")
    h = res.history
    r0 = h["stage"] == 0
    assert np.array_equal(h["loss"][r0], plain["loss"][: k + 1])  # same trajectory up to the stop
    r1 = np.flatnonzero(h["stage"] == 1)
    assert o[1].reason in ("loss", "time")
    if o[1].reason == "loss":
        assert h["half_loss"][r1[-1]] <= 0.3 and np.all(h["half_loss"][r1[:-1]] > 0.3)
        assert (o[1].step_end - o[1].step_start) % 30 == 0
    else:
        assert np.all(h["half_loss"][r1] > 0.3) and o[1].steps == 60
    assert np.array_equal(h["half_loss"][r1], h["loss"][r1])  # stage 2 trains exactly the "half" set
    assert (o[2].steps, o[2].reason) == (0, "loss")
    g = schedule_flow_gap(res)  # a 0-step stage is paired too (its row at the state where it started)
    assert np.isfinite(g["gap"]).all() and g["flow_gap"] < 0.2


@pytest.mark.slow
def test_sampled_stop_by_loss_uses_the_heldout_set_of_that_weighting():
    """Model 2 (SGD) trained on Zipf subjects, stopped by loss 1.2 on "all" (uniform): the stage ends at the
    first evaluation whose held-out loss on "all" is <= 1.2 in the same run without the loss rule (the train
    set's loss gets there far earlier, so the rule really reads the named set)."""
    tc = TaskConfig(S=8, R=2, D=4, T=8, N=5)
    cfg = TrainConfig(task=tc, model="softmax", optimizer="sgd", lr=2.0, batch=256, steps=400, eval_every=10,
                      init_scale=1e-2, d=32, device="cpu", seed=0)
    zipf, level = Distribution(zipf_subjects=1.5), 1.2
    full = train_schedule(cfg, (Stage("a", zipf, Stop(time=800.0)),), eval_sets=("all",)).history
    k = int(np.flatnonzero(full["all_loss"] <= level)[0])
    assert np.flatnonzero(full["loss"] <= level)[0] < k - 5  # the train set crosses much earlier
    res = train_schedule(cfg, (Stage("a", zipf, Stop(loss=level, on="all")),), eval_sets=("all",))
    h, o = res.history, res.stages[0]
    assert (o.reason, o.step_end) == ("loss", int(full["step"][k]))
    assert np.array_equal(h["all_loss"], full["all_loss"][: k + 1])


def test_schedule_refusals():
    cfg = gd_config(0.1, 100, 10)
    with pytest.raises(ConfigError, match="evaluation set"):
        train_schedule(cfg, (Stage("a", Distribution(), Stop(loss=0.1, on="all")),))
    with pytest.raises(ConfigError, match="half a step"):
        train_schedule(cfg, (Stage("a", Distribution(), Stop(time=0.01)),))
    with pytest.raises(ConfigError, match="not built in"):
        train_schedule(cfg, (Stage("a", Distribution(), Stop(time=1.0)),), eval_sets=("nope",))
    with pytest.raises(ConfigError, match="distinct"):
        train_schedule(cfg, (Stage("a", Distribution(), Stop(time=1.0)),) * 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_schedule_equals_eager():
    """The captured step keeps sampling from the current stage's weights (the CDF is rewritten in place)."""
    kw = dict(task=TaskConfig(S=16, R=2, D=4), model="linear", optimizer="sgd", lr=0.1, steps=400,
              eval_every=50, device="cuda")
    stages = (Stage("a", Distribution(subjects="0:8"), Stop(time=20.0)), Stage("b", Distribution(), Stop(time=20.0)))
    a = train_schedule(TrainConfig(cuda_graph=True, **kw), stages, progress=False)
    b = train_schedule(TrainConfig(cuda_graph=False, **kw), stages, progress=False)
    assert np.array_equal(a.history["loss"], b.history["loss"])
