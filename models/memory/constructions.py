"""Memories built without training (SPEC §8): the linear correlation memory, its low-rank truncation and the
MLP random-feature memory with a least-squares readout. Inputs are one instance (no model axis)."""
from __future__ import annotations

import torch

from models.memory.config import MemoryConfig
from models.memory.embeddings import instance
from models.memory.metrics import accuracy, logits
from models.memory.models import MLPMemory, stack_params


def correlation_memory(E: torch.Tensor, U: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """W = Σ_x u_{f*(x)} e_xᵀ = U_{f*}ᵀ E: E (N, d), U (M, d), f (N,) -> W (d, d)."""
    return U[f].T @ E  # (d, N) @ (N, d) -> (d, d)


def low_rank(W: torch.Tensor, k: int) -> torch.Tensor:
    """Best rank-k approximation of W (d, d) in Frobenius norm (truncated SVD); k >= rank returns W."""
    Ul, s, Vh = torch.linalg.svd(W)                   # (d, d), (d,), (d, d)
    return (Ul[:, :k] * s[:k]) @ Vh[:k]               # (d, d)


def linear_accuracy(W: torch.Tensor, E: torch.Tensor, U: torch.Tensor, f: torch.Tensor) -> float:
    """Accuracy of F(e) = W e on the instance (E, U, f)."""
    xi = logits((E @ W.T).unsqueeze(0), U.unsqueeze(0))  # (1, N, M)
    return float(accuracy(xi, f.unsqueeze(0))[0])


def random_feature_memory(config: MemoryConfig, dtype=torch.float64, device="cpu") -> dict:
    """MLP memory with W, b from the standard initialization (fixed) and V (m, d) the minimum-norm least-squares
    solution of Φ V ≈ U_{f*}, Φ = relu(E Wᵀ + b) (N, m). Returns the parameters with a model axis of 1."""
    E, U, f = instance(config, dtype, device)
    params = stack_params([config], dtype, device)                      # W (1, m, d), b (1, m), V (1, m, d)
    Phi = MLPMemory.features(params, E.unsqueeze(0))[0]                 # (N, m)
    # gelsd: SVD-based, minimum-norm and rank-revealing (Φ is rank deficient past N = m and when features die)
    driver = "gelsd" if Phi.device.type == "cpu" else None
    V = torch.linalg.lstsq(Phi, U[f], driver=driver).solution          # (m, d)
    return {**params, "V": V.unsqueeze(0)}


def construction_accuracy(config: MemoryConfig, rank: int | None = None, dtype=torch.float64,
                          device="cpu") -> float:
    """Accuracy of the construction for ``config``: the (rank-``rank``) correlation memory for a linear
    config, the random-feature least-squares memory for an MLP config. float64: the constructions are
    one linear-algebra call, and the argmax is checked on near-ties only at capacity."""
    E, U, f = instance(config, dtype, device)
    if config.model == "linear":
        W = correlation_memory(E, U, f)
        if rank is not None:
            W = low_rank(W, rank)
        return linear_accuracy(W, E, U, f)
    params = random_feature_memory(config, dtype, device)
    xi = logits(MLPMemory.apply(params, E.unsqueeze(0)), U.unsqueeze(0))  # (1, N, M)
    return float(accuracy(xi, f.unsqueeze(0))[0])
