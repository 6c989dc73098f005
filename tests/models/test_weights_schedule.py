"""General training distributions w(s, r) and multi-stage experiments (SPEC §6) against independent references.

Every reference here is written from the SPEC, not from the code under test: Monte Carlo over sequences
drawn as in SPEC §1 (steps 2-4) from w, a brute-force autograd loss over all facts on the compressed state,
plain loops over facts for the metrics of §3, np.outer / explicit formulas for the distributions, run_flow
for the one-stage experiment, and the conserved quantities recomputed from the interpolated states.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.errors import ConfigError
from dynamics.flow.config import FlowConfig
from dynamics.flow.solve import run_flow
from dynamics.experiment.schedule import EvalSpec, ExperimentConfig, Stage, Stop, run_experiment
from models.linear import expand, init_linear, sequence_logits
from models.population import PopulationObjective
from models.sampler import TaskSampler
from models.task import TaskConfig, make_task
from models.weights import Distribution, as_indices, normalized, uniform_over


# ----------------------------------------------------------------------------- independent helpers
def zipf_ref(n, beta):
    v = np.array([(i + 1.0) ** (-beta) for i in range(n)])
    return v / v.sum()


def random_state(task, seed, scale=0.8, boost=0.0):
    """A random, not tiny, compressed state (noise row shared by construction). ``boost`` adds that much to
    W[a*(s, r), s] for a random half of the facts, so some facts are predicted correctly."""
    g = torch.Generator().manual_seed(seed)
    Wt, K = init_linear(task, "balanced", 0.3)
    Wt = Wt + scale * torch.randn(Wt.shape, generator=g)
    K = K + scale * torch.randn(K.shape, generator=g)
    if boost:
        rng = np.random.default_rng(seed)
        for s in range(task.S):
            for r in range(task.R):
                if rng.random() < 0.5:
                    Wt[s, task.answers[s, r]] += boost / max(abs(float(K[s])), 0.3) * np.sign(float(K[s]) or 1.0)
    return Wt, K


def random_weights(task, seed, zero_frac=0.3):
    """Random (S, R) weights, about ``zero_frac`` of them exactly zero, summing to 1."""
    rng = np.random.default_rng(seed)
    w = rng.gamma(0.7, size=(task.S, task.R))
    w[rng.random(w.shape) < zero_frac] = 0.0
    w[0, 0] += 0.1  # never all zero
    return w / w.sum()


def distribution_cases(task):
    """name -> (S, R) weights resolved from recipes: random weights, a subject subset (with a relation
    subset), a mixture of a subset and random weights."""
    S, R = task.S, task.R
    wr = random_weights(task, 7)
    subj = [1, S // 2, S - 1]
    return {
        "random": Distribution(weights=wr).resolve(task),
        "subset": Distribution(subjects=subj, relations=f"0:{R - 1}").resolve(task),
        "mixture": Distribution(mix=((0.7, Distribution(subjects=f"0:{S // 3}")),
                                     (0.3, Distribution(weights=random_weights(task, 8, 0.5))))).resolve(task),
    }


def draw_sequences(task, w, n, rng):
    """SPEC §6 sampling: (s, r) ~ w, then SPEC §1 steps 2-4 (two distinct positions among the first T-1,
    i.i.d. uniform noise elsewhere, EOS last). Returns tokens (n, T) int64 over the full vocabulary, targets."""
    S, R, N, T = task.S, task.R, task.N, task.T
    fact = rng.choice(S * R, size=n, p=np.asarray(w).reshape(-1))
    s, r = fact // R, fact % R
    tokens = S + R + rng.integers(0, N, size=(n, T))
    pos = np.argsort(rng.random((n, T - 1)), axis=1)[:, :2]  # two distinct positions, uniform, in 0..T-2
    rows = np.arange(n)
    tokens[rows, pos[:, 0]] = s
    tokens[rows, pos[:, 1]] = S + r
    tokens[:, T - 1] = task.eos
    return tokens, task.answers[s, r]


def fact_probabilities(task, Wt, K):
    """(S, R, |A|) logits and softmax of every fact, written from SPEC §2 on the compressed state:
    xi_sr = u_s + u_r + (T-3) u_noise + u_EOS, u_z = W[:, z] K[z]."""
    Wt, K = np.asarray(Wt, dtype=np.float64), np.asarray(K, dtype=np.float64)
    S, R, T = task.S, task.R, task.T
    u = Wt * K[:, None]
    c = (T - 3) * u[S + R] + u[S + R + 1]
    xi = np.empty((S, R, task.num_answers))
    for s in range(S):
        for r in range(R):
            xi[s, r] = u[s] + u[S + r] + c
    m = xi.max(-1, keepdims=True)
    e = np.exp(xi - m)
    return xi, e / e.sum(-1, keepdims=True)


def p_given_relation_ref(task, v):
    """(R, |A|) p_v(a|r) by a loop; zero row for relations with no weight."""
    P = np.zeros((task.R, task.num_answers))
    for r in range(task.R):
        q = sum(v[s, r] for s in range(task.S))
        if q > 0:
            for s in range(task.S):
                P[r, task.answers[s, r]] += v[s, r] / q
    return P


def brute_metrics(task, Wt, K, v):
    """The metrics of SPEC §3 under weighting v, by a loop over the facts with positive weight."""
    xi, ph = fact_probabilities(task, Wt, K)
    P = p_given_relation_ref(task, v)
    D = task.D
    out = dict(loss=0.0, relation_loss=0.0, subject_loss=0.0, hallucination_gap=0.0, p_true=0.0, accuracy=0.0)
    for s in range(task.S):
        for r in range(task.R):
            if v[s, r] == 0:
                continue
            a = task.answers[s, r]
            p = ph[s, r]
            out["loss"] += v[s, r] * -math.log(p[a])
            out["relation_loss"] += v[s, r] * -math.log(p[r * D:(r + 1) * D].sum())
            out["subject_loss"] += v[s, r] * -math.log(sum(p[task.answers[s, rr]] for rr in range(task.R)))
            out["hallucination_gap"] += v[s, r] * sum(P[r, b] * math.log(P[r, b] / p[b])
                                                      for b in range(task.num_answers) if P[r, b] > 0)
            out["p_true"] += v[s, r] * p[a]
            out["accuracy"] += v[s, r] * float(all(xi[s, r, a] > xi[s, r, b]
                                                   for b in range(task.num_answers) if b != a))
    return out


def brute_loss(task, Wt, K, v):
    return brute_metrics(task, Wt, K, v)["loss"]


def unpack_np(run_or_layout, y):
    Wt, K = run_or_layout.unpack(y)
    return Wt.numpy().copy(), K.numpy().copy()


def conserved_ref(task, Wt, K):
    """The conserved quantities of SPEC §2 / dynamics.flow.conservation, recomputed in numpy."""
    n, e = task.S + task.R, task.S + task.R + 1
    return dict(balance=K ** 2 - (Wt ** 2).sum(1), column_sums=Wt.sum(1),
                noise_eos_product=np.array([K[n] * K[e] - Wt[n] @ Wt[e]]))


MC_TASK = dict(S=8, R=3, D=4, T=7, N=3, facts="random", seed=5, zipf_subjects=0.9, zipf_relations=0.4)


# ----------------------------------------------------------------------------- 1. Monte Carlo
@pytest.mark.parametrize("case", ["random", "subset", "mixture", "product"])
def test_weighted_loss_matches_monte_carlo(case):
    task = make_task(TaskConfig(**MC_TASK))
    w = distribution_cases(task)[case] if case != "product" else Distribution().resolve(task)
    Wt, K = random_state(task, 21, scale=0.5, boost=3.0)
    exact = float(PopulationObjective(task, weights=w).loss(Wt, K))
    W_full, K_full = (torch.as_tensor(a) for a in expand(task, Wt.numpy(), K.numpy()))
    n = 40000
    if case == "product":  # the project's own sampler draws from p(s) q(r): the same law
        b = TaskSampler(task, seed=3).sample(n)
        tokens, targets = b.tokens, b.targets
    else:
        tok, tgt = draw_sequences(task, w, n, np.random.default_rng(100 + len(case)))
        tokens, targets = torch.as_tensor(tok), torch.as_tensor(tgt)
    ce = F.cross_entropy(sequence_logits(W_full, K_full, tokens), targets, reduction="none").numpy()
    mean, se = ce.mean(), ce.std(ddof=1) / math.sqrt(n)
    assert abs(mean - exact) <= 4 * se
    # the check bites: the loss under other weights (the mirrored ones) is far outside the interval
    other = float(PopulationObjective(task, weights=normalized("m", w[::-1, ::-1], task.S, task.R)).loss(Wt, K))
    assert abs(mean - other) > 8 * se
    # the loss under given weights from any objective equals that objective's own training loss
    obj_u = PopulationObjective(task)
    assert float(obj_u.loss(Wt, K, weights=torch.as_tensor(np.array(w)))) == pytest.approx(exact, rel=1e-13)


# ----------------------------------------------------------------------------- 2. gradient vs autograd
GRAD_TASKS = [dict(S=8, R=3, D=4, T=7, N=3, facts="random", seed=1, zipf_subjects=0.8),
              dict(S=12, R=2, D=3, T=9, N=4, facts="balanced", seed=2)]


@pytest.mark.parametrize("kw", GRAD_TASKS)
@pytest.mark.parametrize("case", ["random", "subset", "mixture"])
def test_gradient_matches_autograd_under_general_weights(kw, case):
    task = make_task(TaskConfig(**kw))
    w = distribution_cases(task)[case]
    obj = PopulationObjective(task, weights=w)
    Wt, K = random_state(task, 3, scale=0.9)
    loss, gW, gK = obj.value_and_grad(Wt, K)

    # brute force over all facts on the compressed state, the noise product entering T-3 times
    S, R, T, N = task.S, task.R, task.T, task.N
    Wc, Kc = Wt.clone().requires_grad_(True), K.clone().requires_grad_(True)
    u = Wc * Kc[:, None]
    c = (T - 3) * u[S + R] + u[S + R + 1]
    ref = 0.0
    for s in range(S):
        for r in range(R):
            if w[s, r] > 0:
                xi = u[s] + u[S + r] + c
                ref = ref + float(w[s, r]) * (torch.logsumexp(xi, 0) - xi[int(task.answers[s, r])])
    ref.backward()
    assert abs(float(loss) - float(ref.detach())) <= 1e-13 * abs(float(ref.detach()))
    gW_ref, gK_ref = Wc.grad, Kc.grad

    # the compressed noise row stands for N identical tokens: d L / d (shared noise row) = sum over the N
    # tokens of the per-token gradient = N x (the per-token row value_and_grad returns)
    noise = S + R
    scale_W, scale_K = float(gW_ref.abs().max()), float(gK_ref.abs().max())
    rows = [z for z in range(obj.layout.C) if z != noise]
    assert torch.allclose(gW[rows], gW_ref[rows], rtol=0, atol=1e-12 * scale_W)
    assert torch.allclose(gK[rows], gK_ref[rows], rtol=0, atol=1e-12 * scale_K)
    assert torch.allclose(N * gW[noise], gW_ref[noise], rtol=0, atol=1e-12 * scale_W)
    assert abs(N * float(gK[noise]) - float(gK_ref[noise])) <= 1e-12 * scale_K
    assert float(gW_ref[noise].abs().max()) > 1e-3 * scale_W  # the noise row is not trivially zero
    # per token, a noise token's gradient is (T-3)/N times EOS's (it appears (T-3)/N times per sequence)
    assert torch.allclose(gW[noise] / K[noise], (T - 3) / N * gW[S + R + 1] / K[S + R + 1], rtol=1e-12,
                          atol=1e-12 * scale_W)


# ----------------------------------------------------------------------------- 3. evaluation-set metrics
def test_eval_set_metrics_match_brute_force_loop():
    task = make_task(TaskConfig(S=9, R=3, D=3, T=6, N=2, facts="random", seed=4, zipf_subjects=0.6))
    w = random_weights(task, 1, zero_frac=0.2)  # training weights, different from every v below
    obj = PopulationObjective(task, weights=w)
    Wt, K = random_state(task, 9, scale=0.7, boost=4.0)
    v_random = random_weights(task, 2, zero_frac=0.25)
    v_zero_rel = random_weights(task, 3, zero_frac=0.0)
    v_zero_rel[:, 1] = 0.0  # relation 1 carries no weight
    v_zero_rel /= v_zero_rel.sum()
    v_uniform = uniform_over(task, subjects=[0, 2, 3, 7], relations=[0, 2])  # relation 1 absent again
    sets = dict(rnd=v_random, zero_rel=v_zero_rel, uni=v_uniform)
    got = obj.metrics(Wt, K, sets={k: obj.eval_set(v) for k, v in sets.items()})
    assert set(got) == set(sets)
    for name, v in sets.items():
        ref = brute_metrics(task, Wt, K, v)
        for k, val in ref.items():
            assert got[name][k] == pytest.approx(val, rel=1e-12, abs=1e-13), (name, k)
        assert 0 < ref["accuracy"] < 1 and ref["hallucination_gap"] > 0  # every metric is exercised
        # H_v(A|R) and p_v(a|r) of the evaluation set
        P = p_given_relation_ref(task, v)
        assert np.allclose(task.p_answer_given_relation(v), P, rtol=0, atol=1e-15)
        qv = v.sum(0)
        H = -sum(qv[r] * sum(P[r, b] * math.log(P[r, b]) for b in range(task.num_answers) if P[r, b] > 0)
                 for r in range(task.R))
        assert task.entropy_given_relation(v) == pytest.approx(H, rel=1e-13, abs=1e-15)
        assert obj.eval_set(v).H_A_given_R == pytest.approx(H, rel=1e-13, abs=1e-15)
    assert not task.p_answer_given_relation(v_zero_rel)[1].any()  # no weight: a zero row, not NaN
    # without sets: the training weights
    ref_w = brute_metrics(task, Wt, K, w)
    m = obj.metrics(Wt, K)
    for k, val in ref_w.items():
        assert m[k] == pytest.approx(val, rel=1e-12, abs=1e-13), k
    assert abs(m["loss"] - got["rnd"]["loss"]) > 1e-3  # the weights matter


# ----------------------------------------------------------------------------- 4. Distribution.resolve
def test_distribution_resolve_against_explicit_formulas(tmp_path):
    task = make_task(TaskConfig(S=10, R=4, D=2, zipf_subjects=0.5, zipf_relations=1.2))
    S, R = task.S, task.R
    # the task's own product, and product Zipf with given exponents
    assert np.allclose(Distribution().resolve(task), np.outer(zipf_ref(S, 0.5), zipf_ref(R, 1.2)),
                       rtol=1e-14, atol=0)
    w = Distribution(zipf_subjects=1.3, zipf_relations=0.0).resolve(task)
    assert np.allclose(w, np.outer(zipf_ref(S, 1.3), np.full(R, 1 / R)), rtol=1e-14, atol=0)
    w = Distribution(zipf_subjects=0.0, zipf_relations=2.0).resolve(task)
    assert np.allclose(w, np.outer(np.full(S, 1 / S), zipf_ref(R, 2.0)), rtol=1e-14, atol=0)
    assert w.dtype == np.float64 and w.shape == (S, R) and not w.flags.writeable
    # subsets: the base restricted, then renormalised; list, range and "lo:hi" agree
    base = np.outer(zipf_ref(S, 0.5), zipf_ref(R, 1.2))
    keep_s, keep_r = [2, 3, 4], [1, 3]
    ref = np.zeros((S, R))
    ref[np.ix_(keep_s, keep_r)] = base[np.ix_(keep_s, keep_r)]
    ref /= ref.sum()
    for subj in ([4, 2, 3], range(2, 5), "2:5"):
        got = Distribution(subjects=subj, relations=[3, 1]).resolve(task)
        assert np.allclose(got, ref, rtol=1e-14, atol=0), subj
        assert got.sum() == pytest.approx(1.0, abs=1e-15)
    got = Distribution(subjects=":3").resolve(task)  # open ends
    assert np.count_nonzero(got.sum(1)) == 3 and got[:3].sum() == pytest.approx(1.0, abs=1e-15)
    assert as_indices("x", "7:", S) == (7, 8, 9)
    # a subset of a Zipf base with other exponents
    got = Distribution(zipf_subjects=1.0, subjects=[0, 9]).resolve(task)
    p = zipf_ref(S, 1.0)
    q = zipf_ref(R, 1.2)
    ref = np.zeros((S, R))
    ref[[0, 9]] = np.outer(p[[0, 9]] / p[[0, 9]].sum(), q)
    assert np.allclose(got, ref, rtol=1e-14, atol=0)
    # explicit weights (normalised), from .npy and .csv files
    raw = np.random.default_rng(0).random((S, R)) * 5
    ref = raw / raw.sum()
    assert np.allclose(Distribution(weights=raw).resolve(task), ref, rtol=1e-14, atol=0)
    np.save(tmp_path / "w.npy", raw)
    np.savetxt(tmp_path / "w.csv", raw, delimiter=",", fmt="%.17g")
    for f in ("w.npy", "w.csv"):
        assert np.allclose(Distribution(weights_file=str(tmp_path / f)).resolve(task), ref, rtol=1e-14, atol=0)
    # a mixture: coefficients normalised, components resolved and weighted
    A = Distribution(subjects="0:4")
    B = Distribution(weights=raw)
    C = Distribution(zipf_subjects=2.0, relations=[0])
    got = Distribution(mix=((3.0, A), (1.0, B), (0.0, C))).resolve(task)
    assert np.allclose(got, 0.75 * A.resolve(task) + 0.25 * B.resolve(task), rtol=1e-14, atol=1e-17)
    got = Distribution(mix=((2, A), (2, C))).resolve(task)
    assert np.allclose(got, 0.5 * A.resolve(task) + 0.5 * C.resolve(task), rtol=1e-14, atol=1e-17)
    # uniform_over and normalized
    u = uniform_over(task, subjects=[1, 2], relations=[0, 1, 3])
    assert np.count_nonzero(u) == 6 and np.allclose(u[u > 0], 1 / 6, rtol=1e-15)
    assert np.allclose(normalized("x", raw, S, R), ref, rtol=1e-14)


BAD_RECIPES = [
    ("negative weight", lambda S, R: dict(weights=np.where(np.eye(S, R) > 0, -1.0, 1.0)), ("weights", "negative")),
    ("all zero", lambda S, R: dict(weights=np.zeros((S, R))), ("weights", "zero")),
    ("non-finite", lambda S, R: dict(weights=np.full((S, R), np.nan)), ("weights", "finite")),
    ("wrong shape", lambda S, R: dict(weights=np.ones((S + 1, R))), ("weights", "shape")),
    ("wrong shape T", lambda S, R: dict(weights=np.ones((R, S))), ("weights", "shape")),
    ("empty subset", lambda S, R: dict(subjects=[]), ("subjects", "empty")),
    ("empty range", lambda S, R: dict(subjects="3:3"), ("subjects",)),
    ("subject out of range", lambda S, R: dict(subjects=[0, S]), ("subjects", "6")),
    ("negative subject", lambda S, R: dict(subjects=[-1]), ("subjects",)),
    ("range past the end", lambda S, R: dict(subjects=f"0:{S + 1}"), ("subjects",)),
    ("relation out of range", lambda S, R: dict(relations=[R]), ("relations", "3")),
    ("not a range", lambda S, R: dict(relations="a:b"), ("relations",)),
    ("repeated index", lambda S, R: dict(subjects=[1, 1]), ("subjects", "repeat")),
    ("non-integer index", lambda S, R: dict(subjects=[1.5]), ("subjects",)),
    ("negative zipf", lambda S, R: dict(zipf_subjects=-1.0), ("zipf_subjects",)),
    ("nan zipf", lambda S, R: dict(zipf_relations=float("nan")), ("zipf_relations",)),
    ("negative mix coefficient", lambda S, R: dict(mix=((-1.0, Distribution()), (2.0, Distribution()))),
     ("mix",)),
    ("zero mix", lambda S, R: dict(mix=((0.0, Distribution()),)), ("mix", "zero")),
    ("mix of non-distribution", lambda S, R: dict(mix=((1.0, "old"),)), ("mix",)),
    ("mix with subjects", lambda S, R: dict(mix=((1.0, Distribution()),), subjects=[0]), ("mix", "subjects")),
    ("weights and file", lambda S, R: dict(weights=np.ones((S, R)), weights_file="w.npy"), ("weights_file",)),
    ("missing file", lambda S, R: dict(weights_file="/nonexistent/w.npy"), ("weights_file",)),
    ("zero restricted", lambda S, R: dict(weights=np.vstack([np.zeros((2, R)), np.ones((S - 2, R))]),
                                          subjects=[0, 1]), ("zero",)),
]


@pytest.mark.parametrize("name,recipe,words", BAD_RECIPES, ids=[b[0] for b in BAD_RECIPES])
def test_bad_distributions_raise_config_error_naming_the_key(name, recipe, words):
    task = make_task(TaskConfig(S=6, R=3, D=2))
    with pytest.raises(ConfigError) as exc:
        Distribution(**recipe(task.S, task.R)).resolve(task)
    msg = str(exc.value)
    for word in words:
        assert word in msg, (name, msg)


def test_bad_mixture_component_is_reported():
    task = make_task(TaskConfig(S=6, R=3, D=2))
    bad = Distribution(subjects=[6], name="old")
    with pytest.raises(ConfigError, match="subjects"):
        Distribution(mix=((0.5, Distribution()), (0.5, bad))).resolve(task)
    with pytest.raises(ConfigError, match="subjects"):  # every recipe is checked before any integration
        run_experiment(ExperimentConfig(flow=FlowConfig(task=TaskConfig(S=6, R=3, D=2)), stages=(
            Stage("a", Distribution(), Stop(time=1.0)), Stage("b", bad, Stop(time=1.0)))))


# ----------------------------------------------------------------------------- 5. one stage = run_flow
@pytest.mark.slow
def test_one_stage_product_experiment_reproduces_run_flow():
    fc = FlowConfig(task=TaskConfig(S=8, R=2, D=4, T=5, N=3, facts="random", seed=1, zipf_subjects=0.7),
                    alpha=0.01)
    flow = run_flow(fc)
    exp = run_experiment(ExperimentConfig(flow=fc, stages=(Stage("one", Distribution(), Stop(loss=fc.eps_conv)),)))
    assert flow.status == "converged" and exp.status == "completed"
    st = exp.stages[0]
    assert st.reason == "loss" and st.t_start == 0.0
    assert abs(st.t_end - flow.t_final) <= 1e-12 * flow.t_final
    a, b = exp.trajectory, flow.trajectory
    assert a.n_rows == b.n_rows > 20
    assert np.max(np.abs(a["t"] - b["t"])) <= 1e-12 * flow.t_final
    for col in ("loss", "relation_loss", "subject_loss", "hallucination_gap", "p_true", "accuracy"):
        assert np.max(np.abs(a[f"train_{col}"] - b[col])) <= 1e-12, col
    for col in ("invariant_drift", "column_sums_drift"):
        assert np.max(np.abs(a[col] - b[col])) <= 1e-12, col
    assert np.all(a["stage"] == 0)
    # the final loss crosses the target in both, and the dense outputs agree between saved times
    for t in (0.37 * flow.t_final, 0.81 * flow.t_final):
        assert float((exp.state_at(t) - flow.state_at(t)).abs().max()) <= 1e-12
    # Distribution() is the task's product, so "all" (uniform) differs from "train" here: the sets are distinct
    assert np.max(np.abs(a["all_loss"] - a["train_loss"])) > 1e-3


# ----------------------------------------------------------------------------- 6. splitting a stage
@pytest.mark.slow
def test_splitting_a_stage_in_two_does_not_change_the_trajectory():
    fc = FlowConfig(task=TaskConfig(S=8, R=2, D=4, T=5, N=2, facts="random", seed=3), alpha=0.01, rtol=1e-11)
    d = Distribution(zipf_subjects=0.7)
    one = run_experiment(ExperimentConfig(flow=fc, stages=(Stage("one", d, Stop(loss=0.01)),), eval_sets=("all",)))
    two = run_experiment(ExperimentConfig(flow=fc, stages=(Stage("a", d, Stop(time=123.4)),
                                                           Stage("b", d, Stop(loss=0.01))), eval_sets=("all",)))
    assert [s.reason for s in two.stages] == ["time", "loss"] and one.stages[0].reason == "loss"
    t_end = one.stages[0].t_end
    assert 123.4 < 0.7 * t_end  # the split falls inside the run, well before its end
    assert two.stages[0].t_end == 123.4 and two.stages[1].t_start == 123.4
    assert abs(two.stages[1].t_end - t_end) <= 1e-9 * t_end
    task = make_task(fc.task)
    w = d.resolve(task)
    lay = PopulationObjective(task).layout
    for t in (20.0, 100.0, 123.4, 123.5, 150.0, 200.0, 0.99 * t_end, min(t_end, two.stages[1].t_end)):
        a, b = one.state_at(t), two.state_at(t)
        assert float((a - b).abs().max()) <= 1e-9 * max(1.0, float(a.abs().max())), t
        la = one.metrics_at(t)["train"]["loss"]
        lb = two.metrics_at(t)["train"]["loss"]
        assert abs(la - lb) <= 1e-9, t
        assert la == pytest.approx(brute_loss(task, *unpack_np(lay, b), w), rel=1e-11)  # train = d's loss
    # the loss changed a lot over the run: the comparison is not between constant states
    assert one.metrics_at(20.0)["train"]["loss"] - one.metrics_at(0.99 * t_end)["train"]["loss"] > 0.5
    # the trajectory table is ordered in t across the stage boundary and tagged by stage
    tr = two.trajectory
    assert np.all(np.diff(tr["t"]) >= 0)
    assert np.all(tr["stage"][tr["t"] < 123.4] == 0) and np.all(tr["stage"][tr["t"] > 123.4] == 1)


# ----------------------------------------------------------------------------- 7. conservation across stages
def test_conservation_laws_hold_across_a_change_of_distribution():
    """Balance Q_z = K_z^2 - |W_z|^2 (per-token rescaling symmetry: the loss depends only on W*K) and the
    column sums sum_a W[a, z] (the loss is invariant to shifting all logits) are conserved for ANY fact
    weights; K_n K_E - <W_n, W_E> is conserved when T-3 == N (noise and EOS move at the same speed),
    whatever the weights. So all three survive a change of distribution between stages."""
    kw = dict(S=16, R=3, D=4, T=6, N=3, facts="random", seed=6)  # T - 3 == N
    fc = FlowConfig(task=TaskConfig(**kw), alpha=0.05, t_max=5000.0)
    task = make_task(fc.task)
    exp = run_experiment(ExperimentConfig(flow=fc, stages=(
        Stage("first", Distribution(subjects="0:8"), Stop(loss=0.02)),
        Stage("second", Distribution(subjects="8:16"), Stop(loss=0.02))),
        eval_sets=("all", "seen", "unseen", EvalSpec("old", Distribution(subjects="0:8")))))
    assert exp.status == "completed" and [s.reason for s in exp.stages] == ["loss", "loss"]
    tr = exp.trajectory
    for col in ("invariant_drift", "column_sums_drift", "noise_eos_product_drift"):
        assert col in tr and np.all(np.isfinite(tr[col])) and np.max(tr[col]) <= 1e-8, col
    assert set(exp.conservation) == {"balance", "column_sums", "noise_eos_product"}
    assert max(exp.conservation.values()) <= 1e-8
    # recomputed independently on the dense output, in both stages and at the boundary
    Wt0, K0 = init_linear(task, "balanced", fc.alpha)
    q0 = conserved_ref(task, Wt0.numpy(), K0.numpy())
    lay = PopulationObjective(task).layout
    t1, t2 = exp.stages[0].t_end, exp.stages[1].t_end
    Wt_b, _ = unpack_np(lay, exp.state_at(t1))
    Wt_e, K_e = unpack_np(lay, exp.state_at(t2))
    for t in np.concatenate([np.linspace(0, t1, 6), np.linspace(t1, t2, 6)[1:], [t1 * (1 - 1e-9)]]):
        q = conserved_ref(task, *unpack_np(lay, exp.state_at(float(t))))
        for k in q0:
            assert np.max(np.abs(q[k] - q0[k])) <= 1e-8, (k, t)
    # the state moved by O(1) in both stages (the laws are not trivially satisfied by a frozen state)
    assert np.max(np.abs(Wt_b - Wt0.numpy())) > 0.5 and np.max(np.abs(Wt_e - Wt_b)) > 0.5
    assert np.max(np.abs(K_e - K0.numpy())) > 0.5
    # the old facts are forgotten somewhat after training on the new ones: the stages really differ
    stage = tr["stage"]
    assert tr["old_loss"][-1] > 2 * tr["old_loss"][stage == 0][-1]
    # unseen: subjects 8..15 during the first stage (finite metrics), empty afterwards (NaN)
    first, second = stage == 0, stage == 1
    assert first.any() and second.any()
    for k in ("loss", "relation_loss", "subject_loss", "hallucination_gap", "p_true", "accuracy", "excess"):
        assert np.all(np.isfinite(tr[f"unseen_{k}"][first])), k
        assert np.all(np.isnan(tr[f"unseen_{k}"][second])), k
        assert np.all(np.isfinite(tr[f"seen_{k}"])), k
    # in the first stage the unseen set is uniform over subjects 8..15 and seen = train (uniform task)
    t_mid = 0.5 * t1
    Wm, Km = unpack_np(lay, exp.state_at(t_mid))
    m = exp.metrics_at(t_mid)
    assert m["unseen"]["loss"] == pytest.approx(brute_loss(task, Wm, Km, uniform_over(task, range(8, 16))),
                                                rel=1e-12)
    assert m["seen"]["loss"] == pytest.approx(m["train"]["loss"], rel=1e-13)
    assert exp.stages[0].set_sizes["unseen"] == 8 * 3 and exp.stages[1].set_sizes["unseen"] == 0
    assert math.isnan(exp.stages[1].entropies["unseen"])


def test_noise_eos_product_is_not_conserved_when_T_minus_3_differs_from_N():
    """Control for the test above: with T-3 != N the third quantity does drift, so that check can fail."""
    kw = dict(S=8, R=2, D=4, T=7, N=2, facts="random", seed=6)
    fc = FlowConfig(task=TaskConfig(**kw), alpha=0.05)
    task = make_task(fc.task)
    exp = run_experiment(ExperimentConfig(flow=fc, stages=(Stage("s", Distribution(subjects="0:4"), Stop(time=50.0)),),
                                          eval_sets=("all",)))
    assert "noise_eos_product" not in exp.conservation and "column_sums" in exp.conservation
    lay = PopulationObjective(task).layout
    Wt0, K0 = init_linear(task, "balanced", fc.alpha)
    q0 = conserved_ref(task, Wt0.numpy(), K0.numpy())
    q = conserved_ref(task, *unpack_np(lay, exp.state_at(50.0)))
    assert abs(q["noise_eos_product"][0] - q0["noise_eos_product"][0]) > 1e-3
    assert np.max(np.abs(q["balance"] - q0["balance"])) <= 1e-8


# ----------------------------------------------------------------------------- 8. stop rules
STOP_TASK = dict(S=8, R=2, D=4, T=5, N=2, facts="random", seed=2)


def test_stop_rules_loss_and_time():
    fc = FlowConfig(task=TaskConfig(**STOP_TASK), alpha=0.02)
    task = make_task(fc.task)
    lay = PopulationObjective(task).layout
    L1, tau, L3 = 0.9, 17.25, 0.05
    head = Distribution(subjects="0:4")
    exp = run_experiment(ExperimentConfig(flow=fc, stages=(
        Stage("a", Distribution(), Stop(loss=L1)),
        Stage("b", Distribution(), Stop(time=tau)),
        Stage("c", Distribution(zipf_subjects=1.0), Stop(loss=L3, on="head")),
        Stage("d", Distribution(), Stop(time=1e6, loss=0.03)),  # the loss comes first
        Stage("e", Distribution(), Stop(time=3.0, loss=1e-6)),  # the time comes first
    ), eval_sets=("all", EvalSpec("head", head))))
    assert exp.status == "completed"
    a, b, c, d, e = exp.stages
    assert [s.reason for s in exp.stages] == ["loss", "time", "loss", "loss", "time"]
    for prev, nxt in zip(exp.stages, exp.stages[1:]):
        assert nxt.t_start == prev.t_end
    w_prod = Distribution().resolve(task)
    # loss stop on the training set: at t_end the (independently computed) loss is <= L and within a hair
    la = brute_loss(task, *unpack_np(lay, exp.state_at(a.t_end)), w_prod)
    assert L1 - 1e-8 <= la <= L1 + 1e-13
    assert exp.trajectory["train_loss"][exp.trajectory["t"] == a.t_end][-1] <= L1
    assert brute_loss(task, *unpack_np(lay, exp.state_at(0.999 * a.t_end)), w_prod) > L1  # first crossing
    # time stop: exactly t_start + tau
    assert b.t_end == b.t_start + tau
    # loss stop on a named set (facts the stage trains): that set's loss, not the train loss, hits L3
    v_head = head.resolve(task)
    lc = brute_loss(task, *unpack_np(lay, exp.state_at(c.t_end)), v_head)
    assert L3 - 1e-8 <= lc <= L3 + 1e-13
    assert exp.metrics_at(c.t_end)["head"]["loss"] == pytest.approx(lc, rel=1e-12)
    assert abs(exp.metrics_at(c.t_end)["train"]["loss"] - L3) > 1e-3
    ld = brute_loss(task, *unpack_np(lay, exp.state_at(d.t_end)), w_prod)
    assert 0.03 - 1e-8 <= ld <= 0.03 + 1e-13 and d.t_start < d.t_end < d.t_start + 1e6
    assert e.t_end == e.t_start + 3.0
    assert brute_loss(task, *unpack_np(lay, exp.state_at(e.t_end)), w_prod) > 1e-6


def test_stop_rule_errors():
    fc = FlowConfig(task=TaskConfig(**STOP_TASK), alpha=0.02)
    part = Distribution(subjects="0:4")
    # until_loss on a set holding facts the stage never trains, no until_time: can never stop
    for on, sets in (("all", ("all",)), ("old", (EvalSpec("old", Distribution(subjects="2:6")),))):
        cfg = ExperimentConfig(flow=fc, stages=(Stage("s", part, Stop(loss=0.01, on=on)),), eval_sets=sets)
        with pytest.raises(ConfigError, match="until_loss") as exc:
            run_experiment(cfg)
        assert "'s'" in str(exc.value) and on in str(exc.value)
    # with until_time it is allowed (and then ends by time)
    ok = run_experiment(ExperimentConfig(flow=fc, stages=(Stage("s", part, Stop(time=2.0, loss=1e-3, on="all")),),
                                         eval_sets=("all",)))
    assert ok.stages[0].reason == "time" and ok.stages[0].t_end == 2.0
    # a subset of the trained facts is fine without until_time
    ok = run_experiment(ExperimentConfig(flow=fc, stages=(Stage("s", Distribution(), Stop(loss=1.5, on="h")),),
                                         eval_sets=(EvalSpec("h", part),)))
    assert ok.stages[0].reason == "loss"
    # stopping on an empty set, on a set that is not listed, and without any rule
    with pytest.raises(ConfigError, match="empty"):
        run_experiment(ExperimentConfig(flow=fc, stages=(Stage("s", Distribution(), Stop(loss=0.1, on="unseen")),),
                                        eval_sets=("unseen",)))
    with pytest.raises(ConfigError, match="not an evaluation set"):
        ExperimentConfig(flow=fc, stages=(Stage("s", Distribution(), Stop(loss=0.1, on="nope")),))
    with pytest.raises(ConfigError, match="stop rule"):
        Stop()
    with pytest.raises(ConfigError, match="until_time"):
        Stop(time=-1.0)
    with pytest.raises(ConfigError, match="until_loss"):
        Stop(loss=0.0)
