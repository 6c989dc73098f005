"""models.memory (SPEC §7): instances, initialization, forward maps, loss and accuracy, each against an
independent reference (a per-model loop, torch's cross_entropy, a Monte Carlo moment with its error bar)."""
import math

import numpy as np
import pytest
import torch

from common.errors import ConfigError
from models.memory import (MODELS, MemoryConfig, accuracy, correct_count, instance, logits, loss, loss_and_grad,
                           parameter_count, sphere, stack_params, target_map)
from models.memory.embeddings import stack_instances


def test_instances_are_nested_in_N_and_M():
    small = instance(MemoryConfig(N=10, d=6, seed=3), torch.float64)
    big = instance(MemoryConfig(N=40, d=6, seed=3), torch.float64)
    assert torch.equal(small[0], big[0][:10]) and torch.equal(small[1], big[1][:10])
    other = instance(MemoryConfig(N=10, d=6, seed=4), torch.float64)
    assert not torch.equal(small[0], other[0])
    # inputs and outputs are independent streams: E is not U
    assert not torch.allclose(small[0], small[1])


def test_sphere_is_unit_norm_and_isotropic():
    """E[e eᵀ] = I/d on the sphere: each entry of the empirical second moment within 5 standard errors."""
    n, d = 20000, 5
    e = sphere(np.random.default_rng(0), n, d)
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0)
    second = np.einsum("ni,nj->nij", e, e)             # (n, d, d)
    mean, se = second.mean(0), second.std(0) / math.sqrt(n)
    assert np.all(np.abs(mean - np.eye(d) / d) < 5 * se)


def test_fixed_target_map_balances_outputs():
    N, M = 103, 8
    f = target_map("fixed", N, M)
    counts = np.bincount(f, minlength=M)
    assert counts.sum() == N and counts.min() >= N // M and counts.max() <= N // M + 1
    assert np.all(np.diff(f) >= 0) and f[0] == 0 and f[-1] == M - 1
    assert np.array_equal(target_map("identity", 7, 7), np.arange(7))


@pytest.mark.parametrize("bad, match", [(dict(N=0), "N = 0"), (dict(model="conv"), "model"),
                                        (dict(model="mlp", m=0), "m = 0"), (dict(m=3), "m = 3"),
                                        (dict(target="fixed"), "M is unset"),
                                        (dict(target="fixed", N=4, M=5), "M = 5"),
                                        (dict(M=3, N=4), "M = 3"), (dict(seed=-1), "seed")])
def test_config_refuses_bad_values(bad, match):
    with pytest.raises(ConfigError, match=match):
        MemoryConfig(**bad)


@pytest.mark.parametrize("model, m", [("linear", 0), ("mlp", 7)])
def test_parameter_count_is_the_number_of_trained_entries(model, m):
    c = MemoryConfig(model=model, N=5, d=4, m=m)
    assert c.params == parameter_count(model, 4, m) == sum(p.numel() for p in stack_params([c]).values())


def test_initialization_is_uniform_with_fan_in_bound():
    """Standard init: entries in ±1/sqrt(fan_in), variance 1/(3 fan_in) within 5 standard errors."""
    c = MemoryConfig(model="mlp", N=4, d=50, m=400, seed=1)
    p = MODELS["mlp"].init(c)
    for name, fan_in in (("W", 50), ("b", 50), ("V", 400)):
        x = p[name].ravel()
        bound = 1 / math.sqrt(fan_in)
        assert np.abs(x).max() <= bound
        var, se = (x**2).mean(), (x**2).std() / math.sqrt(x.size)
        assert abs(var - bound**2 / 3) < 5 * se


def test_forward_loss_and_accuracy_match_a_per_model_loop():
    """Batched MLP forward, loss and accuracy against numpy/torch.nn.functional computed model by model."""
    configs = [MemoryConfig(model="mlp", N=9, d=5, m=6, target="fixed", M=3, seed=s) for s in range(3)]
    params = stack_params(configs, torch.float64)
    E, U, f = stack_instances(configs, torch.float64)
    xi = logits(MODELS["mlp"].apply(params, E), U)   # (3, 9, 3)
    L, acc = loss(xi, f), accuracy(xi, f)
    for b, c in enumerate(configs):
        Eb, Ub, fb = (t.numpy() for t in instance(c, torch.float64))
        p = MODELS["mlp"].init(c)
        F = np.maximum(Eb @ p["W"].T + p["b"], 0) @ p["V"]   # (N, d)
        ref = F @ Ub.T                                        # (N, M)
        assert np.allclose(xi[b].numpy(), ref, atol=1e-12)
        ce = torch.nn.functional.cross_entropy(torch.from_numpy(ref), torch.from_numpy(fb))
        assert float(L[b]) == pytest.approx(float(ce), abs=1e-12)
        assert float(acc[b]) == pytest.approx(np.mean(ref.argmax(1) == fb))


def test_linear_forward_is_W_e():
    configs = [MemoryConfig(N=6, d=4, seed=s) for s in range(2)]
    params = stack_params(configs, torch.float64)
    E, U, f = stack_instances(configs, torch.float64)
    F = MODELS["linear"].apply(params, E)
    for b in range(2):
        assert torch.allclose(F[b], torch.stack([params["W"][b] @ e for e in E[b]]), atol=1e-14)


@pytest.mark.parametrize("model, m", [("linear", 0), ("mlp", 7)])
def test_written_out_gradients_match_autograd(model, m):
    """loss_and_grad and the models' backward against torch.autograd on the summed loss (float64), with
    some ReLU features dead (the MLP's bias pushed negative) so the ReLU's zero branch is exercised."""
    configs = [MemoryConfig(model=model, N=11, d=5, m=m, target="fixed", M=4, seed=s) for s in range(3)]
    E, U, f = stack_instances(configs, torch.float64)
    params = stack_params(configs, torch.float64)
    if model == "mlp":
        params["b"] = params["b"] - 0.4
    cls = MODELS[model]
    ref = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    xi_ref = logits(cls.apply(ref, E), U)
    L_ref = loss(xi_ref, f)
    auto = torch.autograd.grad(L_ref.sum(), list(ref.values()))
    F, saved = cls.forward(params, E)
    L, count, G = loss_and_grad(logits(F, U), f)
    grads = cls.backward(params, E, saved, torch.bmm(U.transpose(1, 2), G.transpose(1, 2)) / 11)  # G = N·∂L/∂ξ
    assert torch.allclose(L, L_ref.detach(), rtol=1e-12, atol=1e-14)
    assert torch.equal(count, correct_count(xi_ref.detach(), f))
    for n, g in zip(ref, auto):
        assert torch.allclose(grads[n], g, rtol=1e-10, atol=1e-14), n
    if model == "mlp":
        assert (saved == 0).any()  # the ReLU's zero branch was exercised


def test_loss_stays_finite_when_the_target_probability_underflows():
    """Logits 1e4 apart: softmax of the target underflows to 0, the loss is still the margin (torch's
    cross_entropy) and the gradient is (softmax − onehot)/N."""
    xi = torch.tensor([[[0.0, 1e4, -1e4], [3.0, 1.0, 2.0]]], dtype=torch.float32)  # (1, 2, 3)
    f = torch.tensor([[0, 0]])
    ref = torch.nn.functional.cross_entropy(xi[0], f[0])
    L, count, G = loss_and_grad(xi.clone(), f)
    assert torch.isfinite(L).all() and float(L[0]) == pytest.approx(float(ref), rel=1e-6)
    assert int(count[0]) == 1
    expected = torch.softmax(xi[0], dim=1) - torch.nn.functional.one_hot(f[0], 3)  # N·∂L/∂ξ
    assert torch.allclose(G[0], expected)


def test_a_tie_at_the_maximum_counts_as_wrong():
    """All logits equal (e.g. an MLP whose features are all dead): no input is counted correct, in
    correct_count, accuracy and loss_and_grad alike; a strict maximum is."""
    xi = torch.zeros(1, 4, 4, dtype=torch.float64)
    f = torch.arange(4).unsqueeze(0)
    assert int(correct_count(xi, f)[0]) == 0 and float(accuracy(xi, f)[0]) == 0.0
    assert int(loss_and_grad(xi.clone(), f)[1][0]) == 0
    xi[0, 2, 2] = 1e-9
    assert int(correct_count(xi, f)[0]) == 1 and int(loss_and_grad(xi.clone(), f)[1][0]) == 1
