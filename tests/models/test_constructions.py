"""models.memory.constructions (SPEC §8) against independent references: an explicit sum of outer products,
the Eckart-Young error of a truncated SVD, exact interpolation where least squares is guaranteed to interpolate,
and accuracy 1 where the construction's condition holds with margin, falling past capacity."""
import numpy as np
import pytest
import torch

from models.memory import MODELS, MemoryConfig, instance
from models.memory.constructions import (construction_accuracy, correlation_memory, linear_accuracy, low_rank,
                                         random_feature_memory)


def test_correlation_memory_is_the_sum_of_outer_products():
    c = MemoryConfig(N=12, d=5, target="fixed", M=4, seed=2)
    E, U, f = instance(c, torch.float64)
    ref = sum(np.outer(U[f[x]].numpy(), E[x].numpy()) for x in range(12))
    assert np.allclose(correlation_memory(E, U, f).numpy(), ref, atol=1e-13)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_low_rank_has_rank_k_and_the_eckart_young_error(k):
    W = torch.from_numpy(np.random.default_rng(0).standard_normal((6, 6)))
    Wk = low_rank(W, k)
    s = np.linalg.svd(W.numpy(), compute_uv=False)
    assert np.linalg.matrix_rank(Wk.numpy(), tol=1e-9) == k
    assert float(torch.linalg.norm(W - Wk)) == pytest.approx(np.sqrt((s[k:] ** 2).sum()), abs=1e-10)


@pytest.mark.parametrize("seed", range(4))
def test_correlation_memory_is_perfect_well_below_capacity(seed):
    """d = 128, N = 64: cross-talk sqrt(N)/d = 0.06 and competitor terms sqrt(4 log N / d) = 0.36, both << 1."""
    assert construction_accuracy(MemoryConfig(N=64, d=128, seed=seed)) == 1.0


def test_correlation_accuracy_falls_past_capacity():
    accs = [construction_accuracy(MemoryConfig(N=N, d=32, seed=0)) for N in (16, 256, 2048)]
    assert accs[0] == 1.0 and accs[1] < 0.5 and accs[2] < 0.05 and accs[0] > accs[1] > accs[2]


def test_full_rank_truncation_keeps_accuracy_and_rank_one_loses_it():
    c = MemoryConfig(N=32, d=64, seed=1)
    E, U, f = instance(c, torch.float64)
    W = correlation_memory(E, U, f)
    assert linear_accuracy(low_rank(W, 64), E, U, f) == linear_accuracy(W, E, U, f) == 1.0
    assert construction_accuracy(c, rank=1) < 0.5


@pytest.mark.parametrize("seed", range(3))
def test_random_features_interpolate_when_N_below_m(seed):
    """N <= m/2: Φ (N, m) has rank N, least squares solves Φ V = U_f exactly, so F(e_x) = u_{f*(x)}."""
    c = MemoryConfig(model="mlp", N=20, d=8, m=40, seed=seed)
    params = random_feature_memory(c)
    E, U, f = instance(c, torch.float64)
    F = MODELS["mlp"].apply(params, E.unsqueeze(0))[0]   # (N, d)
    assert torch.allclose(F, U[f], atol=1e-8)
    assert construction_accuracy(c) == 1.0


def test_random_feature_accuracy_falls_past_m():
    accs = [construction_accuracy(MemoryConfig(model="mlp", N=N, d=16, m=32, seed=0)) for N in (16, 128, 512)]
    assert accs[0] == 1.0 and accs[1] < 0.9 and accs[2] < accs[1]


@pytest.mark.slow  # a subprocess that trains 8 small memories, a few seconds
def test_memory_bench_rows_are_the_constructions_and_the_trainers_accuracies(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from dynamics.capacity_training import MemoryTrainConfig, train_batch
    from tests.helpers import ROOT

    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "memory_constructions.py"), "--Ns", "8", "40",
                    "--seeds", "0", "--max-steps", "32", "--out", str(tmp_path)], check=True, capture_output=True,
                   timeout=300)
    rows = json.loads((tmp_path / "constructions.json").read_text())["rows"]
    assert len(rows) == 4
    for r in rows:
        c = MemoryConfig(model=r["model"], N=r["N"], d=r["d"], m=r["m"], seed=0)
        assert r["construction"] == [construction_accuracy(c)]
        run = train_batch([c] * len(r["lrs"]), r["lrs"], MemoryTrainConfig(max_steps=32, record=False))
        assert r["trained"] == [pytest.approx(float(run.best_accuracy.max()), abs=1e-12)]
