"""Conserved quantities of the exact flow of model 1, as plain functions of the state.

Each takes the compressed state (Wt (C, |A|), K (C,)) and returns a tensor.

- ``balance``: Q_z = K[z]^2 - sum_a W[a, z]^2 for every token (the paper's law;
  rescaling symmetry K -> lam K, W -> W / lam of each token).
- ``column_sums``: M_z = sum_a W[a, z] for every token (the loss is invariant under
  adding a constant to all logits, so sum_a dL/du[a, z] = 0 and dM_z/dt = 0).
- ``noise_eos_product``: K_n K_E - <W_n, W_E>. Every noise token and EOS receive the
  same gradient direction; the Lorentz product of two such tokens is conserved when
  they move at the same speed, i.e. only when (T-3)/N = 1. (Between two noise tokens it
  is always conserved, but in the exact state the noise tokens are identical, where it
  equals Q_noise.)
"""
from __future__ import annotations

import torch


def balance(Wt: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """(C,) Q_z = K_z^2 - |W_z|^2."""
    return K * K - (Wt * Wt).sum(1)


def column_sums(Wt: torch.Tensor, K: torch.Tensor | None = None) -> torch.Tensor:
    """(C,) M_z = sum_a W[a, z]."""
    return Wt.sum(1)


def noise_eos_product(Wt: torch.Tensor, K: torch.Tensor, noise: int, eos: int) -> torch.Tensor:
    """() K_n K_E - <W_n, W_E> (conserved only when T - 3 = N)."""
    return K[noise] * K[eos] - Wt[noise] @ Wt[eos]


def conserved_quantities(layout, Wt: torch.Tensor, K: torch.Tensor) -> dict:
    """All conserved quantities of the flow for this layout: name -> 1-D float64 tensor."""
    out = {"balance": balance(Wt, K), "column_sums": column_sums(Wt)}
    if layout.T - 3 == layout.N:
        out["noise_eos_product"] = noise_eos_product(Wt, K, layout.noise, layout.eos).reshape(1)
    return out


def drift(q0: dict, q: dict) -> dict:
    """name -> max |q(t) - q(0)| over its entries."""
    return {k: float((q[k] - q0[k]).abs().max()) for k in q0}
