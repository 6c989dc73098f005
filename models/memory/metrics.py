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
    """Fraction of inputs whose target logit is strictly the largest, per model: (B, N, M), (B, N) -> (B,)."""
    return correct_count(xi, f).to(xi.dtype) / xi.shape[1]     # (B,)


def correct_count(xi: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Number of inputs x whose target logit is strictly the largest, ξ_{f*(x)}(x) > ξ_y(x) for every
    y ≠ f*(x) (a tie at the maximum counts as wrong), per model: (B, N, M), (B, N) -> (B,) int64."""
    return _strictly_largest(xi.clone(), f)


def _strictly_largest(xi: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """correct_count, overwriting the target logits of ``xi`` with -inf."""
    return _target_and_rivals(xi, f.unsqueeze(2))[2]


def _target_and_rivals(xi: torch.Tensor, target: torch.Tensor):
    """(ξ_f* (B, N, 1), the best other logit max_{y ≠ f*} ξ_y (B, N, 1), the correct count (B,)) for targets
    ``target`` (B, N, 1), overwriting the target logits of ``xi`` with -inf."""
    correct = torch.gather(xi, 2, target)                                  # (B, N, 1)
    rivals = xi.scatter_(2, target, -torch.inf).amax(dim=2, keepdim=True)  # (B, N, 1)
    return correct, rivals, (correct > rivals).squeeze(2).sum(dim=1)


def loss_and_grad(xi: torch.Tensor, f: torch.Tensor):
    """The loss, the correct count and the loss's gradient from one set of logits, for training.

    xi (B, N, M) logits, overwritten (used as scratch); f (B, N) int64 targets -> (L (B,) as ``loss``,
    count (B,) as ``correct_count``, G (B, N, M) = N · ∂L_b/∂ξ_b = softmax(ξ_b) − onehot(f*): the 1/N is left
    to the caller, to be applied to a smaller product). Written out rather than by autograd because the
    (B, N, M) logits dominate a step: this reads them four times (one fused softmax, which writes G, two max
    reductions and the caller's product), autograd's logsumexp, its backward and an argmax about twice as
    often (and argmax, a reduction with indices, is several times slower than a max on the CPU)."""
    target = f.unsqueeze(2)                                     # (B, N, 1)
    G = torch.softmax(xi, dim=2)                                # (B, N, M)
    correct, rivals, count = _target_and_rivals(xi, target)     # (B, N, 1), (B, N, 1), (B,)
    top = torch.maximum(correct, rivals)                        # (B, N, 1) max_y ξ_y
    # logsumexp ξ = top + log Σ exp(ξ − top) = top − log max softmax (the largest probability is exp(0)/Σ,
    # never below 1/M, so its log is finite where the target's probability may underflow)
    L = (top - correct - G.amax(dim=2, keepdim=True).log()).squeeze(2).mean(dim=1)  # (B,)
    G.scatter_add_(2, target, torch.full(target.shape, -1.0, dtype=G.dtype, device=G.device))
    return L, count, G


def needed_count(N: int, target: float = ACCURACY_TARGET) -> int:
    """Smallest number of correct inputs out of N with accuracy >= target, in exact arithmetic (so that
    99 of 100 is a success whatever the float rounding of 99/100)."""
    return math.ceil(Fraction(str(target)) * N)
