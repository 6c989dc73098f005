"""Logits, loss and accuracy of memories (SPEC §7), written once, batched over a leading model axis B."""
from __future__ import annotations

import math
from fractions import Fraction

import torch

ACCURACY_TARGET = 0.99  # a run succeeds once its accuracy reaches this (the paper's criterion)


def logits(F: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """ξ_y(x) = u_yᵀ F(e_x): F (B, N, d), U (B, M, d) -> (B, N, M)."""
    return torch.bmm(F, U.transpose(1, 2))  # (B, N, M)


def loss(xi: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy per model: xi (B, N, M) logits, f (B, N) int64 targets -> (B,)."""
    logz = torch.logsumexp(xi, dim=2)                            # (B, N)
    correct = torch.gather(xi, 2, f.unsqueeze(2)).squeeze(2)     # (B, N)
    return (logz - correct).mean(dim=1)                          # (B,)


def accuracy(xi: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Fraction of inputs whose argmax logit is the target, per model: (B, N, M), (B, N) -> (B,)."""
    return (xi.argmax(dim=2) == f).to(xi.dtype).mean(dim=1)     # (B,)


def correct_count(xi: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Number of inputs whose argmax logit is the target, per model: (B, N, M), (B, N) -> (B,) int64."""
    return (xi.argmax(dim=2) == f).sum(dim=1)  # (B,)


def needed_count(N: int, target: float = ACCURACY_TARGET) -> int:
    """Smallest number of correct inputs out of N with accuracy >= target, in exact arithmetic (so that
    99 of 100 is a success whatever the float rounding of 99/100)."""
    return math.ceil(Fraction(str(target)) * N)
