"""dynamics.capacity_training (SPEC §7): the functional batched Adam against torch.optim.Adam, frozen models
unchanged, the batched run against the one-at-a-time runs, and training succeeding well below capacity and
failing far above it."""
import numpy as np
import pytest
import torch

from common.errors import ConfigError
from dynamics.capacity_training import BatchedAdam, MemoryTrainConfig, train_batch, train_one
from models.memory import MODELS, MemoryConfig, logits, loss, stack_params
from models.memory.embeddings import stack_instances

F64 = dict(dtype="float64")


def test_batched_adam_matches_torch_optim_adam():
    """20 steps of each model with its own lr equal torch.optim.Adam run on that model alone."""
    configs = [MemoryConfig(model="mlp", N=10, d=4, m=5, seed=s) for s in range(2)]
    lrs = [0.05, 0.01]
    E, U, f = stack_instances(configs, torch.float64)
    params = {n: p.requires_grad_(True) for n, p in stack_params(configs, torch.float64).items()}
    opt = BatchedAdam(params, torch.tensor(lrs))
    active = torch.ones(2, dtype=torch.bool)
    for _ in range(20):
        L = loss(logits(MODELS["mlp"].apply(params, E), U), f).sum()
        opt.step(params, dict(zip(params, torch.autograd.grad(L, list(params.values())))), active)
    for b in range(2):
        ref = {n: p.detach().clone().requires_grad_(True)
               for n, p in stack_params(configs[b:b + 1], torch.float64).items()}
        torch_opt = torch.optim.Adam(list(ref.values()), lr=lrs[b])
        for _ in range(20):
            torch_opt.zero_grad()
            loss(logits(MODELS["mlp"].apply(ref, E[b:b + 1]), U[b:b + 1]), f[b:b + 1]).sum().backward()
            torch_opt.step()
        for n in params:
            assert torch.allclose(params[n][b], ref[n][0], rtol=1e-10, atol=1e-12), n


def test_inactive_model_does_not_change():
    params = {"W": torch.randn(3, 2, 2)}
    before = params["W"].clone()
    opt = BatchedAdam(params, torch.full((3,), 0.1))
    opt.step(params, {"W": torch.randn(3, 2, 2)}, torch.tensor([True, False, True]))
    assert torch.equal(params["W"][1], before[1]) and torch.equal(opt.m["W"][1], torch.zeros(2, 2))
    assert not torch.equal(params["W"][0], before[0])


@pytest.mark.parametrize("model, m", [("linear", 0), ("mlp", 8)])
def test_batched_run_equals_one_at_a_time_runs(model, m):
    """2 seeds × 2 learning rates in one batch give the same curves, stops and parameters as 4 single runs,
    including models that stop early (and stay frozen) beside ones that run to the end."""
    N = 8 if model == "linear" else 16
    configs = [MemoryConfig(model=model, N=N, d=5, m=m, seed=s) for s in (0, 1) for _ in (0, 1)]
    lrs = [0.1, 0.003] * 2
    train = MemoryTrainConfig(max_steps=200, **F64)
    batch = train_batch(configs, lrs, train)
    assert batch.success.any() and not batch.success.all()  # both kinds of model are in the batch
    K = batch.loss.shape[0]
    for b, (c, lr) in enumerate(zip(configs, lrs)):
        one = train_one(c, lr, train)
        assert one.success[0] == batch.success[b] and one.steps[0] == batch.steps[b]
        k = one.loss.shape[0]
        np.testing.assert_allclose(batch.loss[:k, b], one.loss[:, 0], rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(batch.accuracy[:k, b], one.accuracy[:, 0])
        # after its own stop a finished model stays where it stopped
        np.testing.assert_allclose(batch.loss[k - 1:K, b], one.loss[-1, 0], rtol=1e-10, atol=1e-12)
        for n in one.params:
            np.testing.assert_allclose(batch.params[n][b], one.params[n][0], rtol=1e-9, atol=1e-12)


def test_float32_batch_equals_single_runs():
    """The default dtype: 8 MLPs in one batch against their single runs (the bench's check, made a test)."""
    configs = [MemoryConfig(model="mlp", N=40, d=6, m=12, seed=s) for s in range(8)]
    train = MemoryTrainConfig(max_steps=60)
    batch = train_batch(configs, [0.03] * 8, train)
    for b, c in enumerate(configs):
        one = train_one(c, 0.03, train)
        np.testing.assert_allclose(batch.loss[:, b], one.loss[:, 0], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(batch.accuracy[:, b], one.accuracy[:, 0])


def test_stop_rule_is_the_first_step_at_target():
    r = train_one(MemoryConfig(N=8, d=6, seed=0), 0.05, MemoryTrainConfig(max_steps=500, **F64))
    assert r.success[0] and r.accuracy[-1, 0] >= 0.99 and np.all(r.accuracy[:-1, 0] < 0.99)
    assert r.steps[0] == r.loss.shape[0] - 1


def test_linear_memory_learns_below_capacity_and_fails_far_above():
    below = train_batch([MemoryConfig(N=8, d=8, seed=s) for s in range(3)], [0.03] * 3,
                        MemoryTrainConfig(max_steps=2000, record=False))
    assert below.success.all()
    # N = 8 d² facts in d² = 16 parameters: cannot be stored (the loss still decreases)
    above = train_one(MemoryConfig(N=128, d=4, seed=0), 0.03, MemoryTrainConfig(max_steps=300))
    assert not above.success[0] and above.best_accuracy[0] < 0.3
    assert above.loss[-1, 0] < above.loss[0, 0]


def test_batch_of_mixed_shapes_is_refused():
    with pytest.raises(ConfigError, match="different shapes"):
        train_batch([MemoryConfig(N=4), MemoryConfig(N=5)], [0.1, 0.1])
    with pytest.raises(ConfigError, match="lr"):
        train_batch([MemoryConfig(N=4)], [-1.0])
