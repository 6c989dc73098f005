"""The two trained memories of SPEC §7, written for a leading model axis B (B = 1 for a single memory).

Parameters are plain dicts of tensors so that B memories of one shape are one set of tensors and one
batched computation (dynamics.capacity_training). ``apply`` maps input embeddings E (B, N, d) to F(E)
(B, N, d); the logits are then ``metrics.logits``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from models.memory.config import MemoryConfig
from models.memory.embeddings import generators


def _uniform(rng: np.random.Generator, shape, fan_in: int) -> np.ndarray:
    """Entries i.i.d. U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch nn.Linear's default (standard) init."""
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape)


class LinearMemory:
    """F(e) = W e with W (d, d); d² parameters."""

    names = ("W",)

    @staticmethod
    def init(config: MemoryConfig) -> dict:
        """Standard initialization of one memory (float64 numpy, no model axis), from its seed's init stream."""
        rng = generators(config.seed)["init"]
        return {"W": _uniform(rng, (config.d, config.d), config.d)}  # (d, d)

    @staticmethod
    def apply(params: dict, E: torch.Tensor) -> torch.Tensor:
        """F(E): E (B, N, d) -> (B, N, d), row x being W e_x."""
        return torch.bmm(E, params["W"].transpose(1, 2))  # (B, N, d)

    @staticmethod
    def forward(params: dict, E: torch.Tensor):
        """(F(E), what ``backward`` needs): the linear memory needs nothing beyond E."""
        return LinearMemory.apply(params, E), None

    @staticmethod
    def backward(params: dict, E: torch.Tensor, saved, dFt: torch.Tensor) -> dict:
        """Gradients of a loss whose gradient with respect to F(E) is dFtᵀ, dFt (B, d, N) (the transposed
        layout: MKL's small batched products are several times faster in it): ∂L/∂W = dFᵀ E (B, d, d)."""
        return {"W": torch.bmm(dFt, E)}


class MLPMemory:
    """F(e) = Vᵀ relu(W e + b) with W (m, d), b (m,), V (m, d); 2md + m parameters, standard parameterization."""

    names = ("W", "b", "V")

    @staticmethod
    def init(config: MemoryConfig) -> dict:
        """Standard initialization of one memory (float64 numpy, no model axis): W, b with fan-in d, V fan-in m."""
        rng = generators(config.seed)["init"]
        d, m = config.d, config.m
        W = _uniform(rng, (m, d), d)  # (m, d)
        b = _uniform(rng, (m,), d)    # (m,)
        V = _uniform(rng, (m, d), m)  # (m, d)
        return {"W": W, "b": b, "V": V}

    @staticmethod
    def features(params: dict, E: torch.Tensor) -> torch.Tensor:
        """Hidden activations relu(W e_x + b): E (B, N, d) -> (B, N, m)."""
        pre = torch.baddbmm(params["b"].unsqueeze(1), E, params["W"].transpose(1, 2))  # (B, N, m)
        return torch.relu(pre)

    @staticmethod
    def apply(params: dict, E: torch.Tensor) -> torch.Tensor:
        """F(E): E (B, N, d) -> (B, N, d), row x being Vᵀ relu(W e_x + b)."""
        return torch.bmm(MLPMemory.features(params, E), params["V"])  # (B, N, d)

    @staticmethod
    def forward(params: dict, E: torch.Tensor):
        """(F(E), the hidden activations h (B, N, m) that ``backward`` needs)."""
        h = MLPMemory.features(params, E)
        return torch.bmm(h, params["V"]), h

    @staticmethod
    def backward(params: dict, E: torch.Tensor, h: torch.Tensor, dFt: torch.Tensor) -> dict:
        """Gradients of a loss whose gradient with respect to F(E) is dF = dFtᵀ, dFt (B, d, N) (the transposed
        layout: MKL's small batched products are several times faster in it), h from ``forward``:
        ∂L/∂V = hᵀ dF (B, m, d); through the ReLU (derivative 0 where the pre-activation is <= 0, i.e. where
        h = 0, as autograd's) δᵀ = (V dFt) ⊙ 1[hᵀ > 0] (B, m, N), ∂L/∂W = δᵀ E (B, m, d), ∂L/∂b = Σ_x δ (B, m)."""
        delta_t = torch.bmm(params["V"], dFt).mul_(h.transpose(1, 2) > 0)  # (B, m, N)
        return {"W": torch.bmm(delta_t, E), "b": delta_t.sum(dim=2),
                "V": torch.bmm(dFt, h).transpose(1, 2)}


MODELS = {"linear": LinearMemory, "mlp": MLPMemory}


def stack_params(configs, dtype=torch.float32, device="cpu") -> dict:
    """Initial parameters of several memories of one kind and shape, stacked on a leading model axis B."""
    cls = MODELS[configs[0].model]
    per_model = [cls.init(c) for c in configs]
    return {n: torch.as_tensor(np.stack([p[n] for p in per_model]), dtype=dtype, device=device)
            for n in cls.names}  # each (B, ...)
