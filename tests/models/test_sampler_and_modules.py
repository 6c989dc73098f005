"""Issue 4: the sampler (SPEC §1) and the two torch models (SPEC §2, §4) against independent references.

References: the task's own definition (p, q, answers, layout) for the sampler statistics, with
4-standard-error tolerances; sequence_logits (model 1's definition) and the exact population loss
of PopulationObjective for model 1; a per-sequence, per-position loop for model 2.
"""
import math

import numpy as np
import pytest
import torch

from models.linear import compress, expand, init_linear, sequence_logits
from models.modules import LinearAttentionModel, SoftmaxAttentionModel
from models.population import PopulationObjective
from models.sampler import TaskSampler
from models.task import TaskConfig, make_task
from helpers import PAPER


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only spin on a shared 2-core machine
    yield
    torch.set_num_threads(old)


def within_4se(counts, n, probs):
    """Every empirical frequency counts/n within 4 binomial standard errors of probs."""
    counts, probs = np.asarray(counts, float), np.asarray(probs, float)
    se = np.sqrt(probs * (1 - probs) / n)
    return np.abs(counts / n - probs) <= 4 * se + 1e-12


@pytest.mark.parametrize("cfg", [TaskConfig(S=8, R=3, D=4, T=7, N=5, facts="random", seed=2),
                                 TaskConfig(S=6, R=4, D=3, T=5, N=3, facts="balanced", zipf_subjects=1.2,
                                            zipf_relations=0.7, seed=1)])
def test_sampler_statistics_match_spec(cfg):
    task = make_task(cfg)
    n = 200_000
    b = TaskSampler(task, seed=11).sample(n)
    tok, S, R, N, T = b.tokens.numpy(), task.S, task.R, task.N, task.T
    assert tok.shape == (n, T) and b.tokens.dtype == torch.long
    # layout: EOS last; exactly one subject (= s) and one relation (= S + r) among the first T-1; rest noise
    assert np.all(tok[:, -1] == task.eos)
    body = tok[:, :-1]
    is_s, is_r = body < S, (body >= S) & (body < S + R)
    is_n = (body >= S + R) & (body < S + R + N)
    assert np.all(is_s.sum(1) == 1) and np.all(is_r.sum(1) == 1) and np.all(is_n.sum(1) == T - 3)
    s, r = b.s.numpy(), b.r.numpy()
    assert np.array_equal(body[is_s], s) and np.array_equal(body[is_r] - S, r)
    assert np.array_equal(b.targets.numpy(), task.answers[s, r])
    # positions: the pair (i, j) uniform over the (T-1)(T-2) ordered distinct pairs
    i, j = is_s.argmax(1), is_r.argmax(1)
    pair = i * (T - 1) + j
    c = np.bincount(pair, minlength=(T - 1) ** 2)
    valid = np.array([a != bb for a in range(T - 1) for bb in range(T - 1)])
    assert np.all(c[~valid] == 0)
    assert np.all(within_4se(c[valid], n, np.full(valid.sum(), 1 / ((T - 1) * (T - 2)))))
    # noise tokens uniform over N (counted among all noise positions)
    cn = np.bincount(body[is_n] - S - R, minlength=N)
    assert np.all(within_4se(cn, n * (T - 3), np.full(N, 1 / N)))
    # facts (s, r) with probability p(s) q(r)
    cf = np.bincount(s * R + r, minlength=S * R)
    assert np.all(within_4se(cf, n, task.fact_weights.reshape(-1)))


def test_sampler_seeded_and_generator_on_device():
    task = make_task(TaskConfig(S=8, R=2, D=4))
    a, b, c = (TaskSampler(task, seed=k).sample(64) for k in (5, 5, 6))
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    assert TaskSampler(task).generator.device.type == "cpu"


def test_sample_counts_matches_sample_distribution():
    """The bag-of-tokens draw (model 1's fast path): noise counts are multinomial(T-3, 1/N), facts p(s) q(r)."""
    task = make_task(TaskConfig(S=6, R=3, D=3, T=9, N=4, facts="random", zipf_subjects=1.0, seed=4))
    n = 100_000
    s, r, y, counts = TaskSampler(task, seed=3).sample_counts(n)
    counts = counts.numpy()
    assert counts.shape == (n, task.N) and np.all(counts.sum(1) == task.T - 3)
    assert np.array_equal(y.numpy(), task.answers[s.numpy(), r.numpy()])
    N, m = task.N, task.T - 3
    # each count ~ Binomial(T-3, 1/N): mean within 4 SE, and P(count = 0) = (1 - 1/N)^(T-3)
    assert np.all(np.abs(counts.mean(0) - m / N) <= 4 * math.sqrt(m / N * (1 - 1 / N) / n))
    p0 = (1 - 1 / N) ** m
    assert np.all(within_4se((counts == 0).sum(0), n, np.full(N, p0)))
    cf = np.bincount(s.numpy() * task.R + r.numpy(), minlength=task.S * task.R)
    assert np.all(within_4se(cf, n, task.fact_weights.reshape(-1)))


# ----------------------------------------------------------------------------- model 1
def random_full_state(task, seed, identical_noise=True):
    rng = np.random.default_rng(seed)
    C, A = task.S + task.R + 2, task.num_answers
    Wt, K = rng.normal(size=(C, A)) * 0.7, rng.normal(size=C) * 0.9 + 0.3
    W, Kf = expand(task, Wt, K)
    if not identical_noise:
        W = W + rng.normal(size=W.shape) * 0.1
        Kf = Kf + rng.normal(size=Kf.shape) * 0.1
    return W, Kf


def test_linear_module_is_sequence_logits_and_flow_init():
    task = make_task(TaskConfig(S=8, R=3, D=4, T=6, N=5, facts="random", seed=1))
    for kind, scale in (("balanced", 1e-3), ("uniform", 1e-5)):
        m = LinearAttentionModel(task, kind, scale, dtype=torch.float64)
        Wt, K = init_linear(task, kind, scale)
        Wc, Kc = compress(task, m.W.detach().numpy(), m.K.detach().numpy())
        assert np.array_equal(Wc, Wt.numpy()) and np.array_equal(Kc, K.numpy())
    W, K = random_full_state(task, 0, identical_noise=False)
    m = LinearAttentionModel(task, dtype=torch.float64)
    with torch.no_grad():
        m.W.copy_(torch.as_tensor(W))
        m.K.copy_(torch.as_tensor(K))
    tokens = TaskSampler(task, seed=2).sample(300).tokens
    ref = sequence_logits(torch.as_tensor(W), torch.as_tensor(K), tokens)
    assert torch.allclose(m(tokens), ref, rtol=1e-12, atol=1e-12)


def test_linear_hand_gradient_equals_autograd():
    task = make_task(TaskConfig(S=8, R=3, D=4, T=6, N=5, facts="random", seed=1))
    W, K = random_full_state(task, 1, identical_noise=False)
    m = LinearAttentionModel(task, dtype=torch.float64)
    with torch.no_grad():
        m.W.copy_(torch.as_tensor(W))
        m.K.copy_(torch.as_tensor(K))
    b = TaskSampler(task, seed=4).sample(257)
    loss = torch.nn.functional.cross_entropy(m(b.tokens), b.targets)
    gW, gK = torch.autograd.grad(loss, [m.W, m.K])
    loss2 = m.loss_and_grad_(b.tokens, b.targets)
    assert abs(float(loss.detach()) - float(loss2)) < 1e-12
    assert torch.allclose(m.W.grad, gW, atol=1e-13) and torch.allclose(m.K.grad, gK, atol=1e-13)


def test_linear_module_mc_loss_matches_exact_population_loss():
    """Average of the module's cross-entropy over sampled sequences = exact population loss (4 SE)."""
    task = make_task(TaskConfig(S=8, R=3, D=4, T=7, N=5, facts="random", zipf_subjects=0.8, seed=3))
    W, K = random_full_state(task, 2)
    Wt, Kc = compress(task, W, K)
    exact = float(PopulationObjective(task).loss(torch.as_tensor(Wt), torch.as_tensor(Kc)))
    m = LinearAttentionModel(task, dtype=torch.float64)
    with torch.no_grad():
        m.W.copy_(torch.as_tensor(W))
        m.K.copy_(torch.as_tensor(K))
    b = TaskSampler(task, seed=9).sample(200_000)
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(m(b.tokens), b.targets, reduction="none").numpy()
    se = ce.std() / math.sqrt(ce.size)
    assert abs(ce.mean() - exact) <= 4 * se, (ce.mean(), exact, se)


def test_linear_mc_gradient_matches_population_gradient_per_token():
    """The expected minibatch gradient on the full parameters equals PopulationObjective.value_and_grad
    expanded to all tokens (noise row = one noise token): the SGD/flow correspondence of SPEC §5."""
    task = make_task(TaskConfig(S=6, R=2, D=3, T=6, N=4, facts="random", seed=5))
    W, K = random_full_state(task, 3)
    Wt, Kc = compress(task, W, K)
    _, gWt, gKc = PopulationObjective(task).value_and_grad(torch.as_tensor(Wt), torch.as_tensor(Kc))
    gW_ref, gK_ref = expand(task, gWt.numpy(), gKc.numpy())
    m = LinearAttentionModel(task, dtype=torch.float64)
    with torch.no_grad():
        m.W.copy_(torch.as_tensor(W))
        m.K.copy_(torch.as_tensor(K))
    sampler = TaskSampler(task, seed=6)
    k, n = 40, 5000
    gW = np.zeros((k,) + W.shape)
    gK = np.zeros((k,) + K.shape)
    for i in range(k):  # k independent batch means -> mean and its standard error
        b = sampler.sample(n)
        m.loss_and_grad_(b.tokens, b.targets)
        gW[i], gK[i] = m.W.grad.numpy(), m.K.grad.numpy()
    for g, ref in ((gW, gW_ref), (gK, gK_ref)):
        se = g.std(0, ddof=1) / math.sqrt(k)
        assert np.all(np.abs(g.mean(0) - ref) <= 4 * se + 1e-12)


# ----------------------------------------------------------------------------- model 2
def loop_softmax_logits(model, tokens):
    """Direct definition of SPEC §4, one sequence and one position at a time."""
    phi, psi = model.phi.double(), model.psi.double()
    Wkq, Wov = model.W_KQ.detach().double(), model.W_OV.detach().double()
    out = []
    for seq in tokens.tolist():
        q = phi[seq[-1]]
        scores = [float(phi[z] @ (Wkq @ q)) for z in seq]
        mx = max(scores)
        e = [math.exp(x - mx) for x in scores]
        attn = [x / sum(e) for x in e]
        h = sum(a * phi[z] for a, z in zip(attn, seq))
        out.append([float(psi[a] @ (Wov @ h)) for a in range(psi.shape[0])])
    return torch.tensor(out, dtype=torch.float64)


def test_softmax_forward_matches_loop():
    task = make_task(TaskConfig(S=6, R=3, D=2, T=7, N=4, facts="random", seed=2))
    m = SoftmaxAttentionModel(task, d=16, init_scale=3.0, seed=1, dtype=torch.float64)
    tokens = TaskSampler(task, seed=1).sample(6).tokens
    tokens[0, -1] = 0  # any query token, not only EOS
    got = m(tokens)
    ref = loop_softmax_logits(m, tokens)
    assert got.shape == (6, task.num_answers)
    assert torch.allclose(got, ref, rtol=1e-10, atol=1e-12)


def test_softmax_embeddings_fixed_unit_sphere_and_init_scale():
    task = make_task(PAPER)
    m = SoftmaxAttentionModel(task, d=64, init_scale=0.5, seed=3)
    assert {n for n, _ in m.named_parameters()} == {"W_KQ", "W_OV"}
    assert m.phi.shape == (task.vocab_size, 64) and m.psi.shape == (task.num_answers, 64)
    assert torch.allclose(m.phi.norm(dim=1), torch.ones(task.vocab_size, dtype=m.phi.dtype), atol=1e-6)
    assert torch.allclose(m.psi.norm(dim=1), torch.ones(task.num_answers, dtype=m.psi.dtype), atol=1e-6)
    # entries N(0, s^2/d): the mean square of 2*64*64 entries is s^2/d within 5 %
    ms = float(torch.cat([m.W_KQ.detach().reshape(-1), m.W_OV.detach().reshape(-1)]).double().pow(2).mean())
    assert abs(ms / (0.25 / 64) - 1) < 0.05
    m2 = SoftmaxAttentionModel(task, d=64, init_scale=0.5, seed=3)
    assert torch.equal(m.phi, m2.phi) and torch.equal(m.W_KQ, m2.W_KQ)
