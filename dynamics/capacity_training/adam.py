"""Adam on parameters with a leading model axis, each model with its own learning rate and its own stop.

A model that is not active keeps its parameters and both moments unchanged (a finished model stops changing).
All active models started together, so they share the step count used in the bias corrections.
"""
from __future__ import annotations

import torch


class BatchedAdam:
    """Functional Adam (Kingma & Ba; torch.optim.Adam's update without weight decay or amsgrad) over a dict
    of tensors shaped (B, ...), with learning rates ``lr`` (B,)."""

    def __init__(self, params: dict, lr: torch.Tensor, beta1=0.9, beta2=0.999, eps=1e-8):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.m = {n: torch.zeros_like(p) for n, p in params.items()}
        self.v = {n: torch.zeros_like(p) for n, p in params.items()}
        self.t = 0

    @torch.no_grad()
    def step(self, params: dict, grads: dict, active: torch.Tensor) -> None:
        """One update in place of the models where ``active`` (B,) bool is true."""
        self.t += 1
        c1, c2 = 1 - self.beta1**self.t, 1 - self.beta2**self.t
        for n, p in params.items():
            shape = (-1,) + (1,) * (p.dim() - 1)  # broadcast (B,) over a model's entries
            keep = active.view(shape)
            g = grads[n]
            m = torch.where(keep, self.beta1 * self.m[n] + (1 - self.beta1) * g, self.m[n])
            v = torch.where(keep, self.beta2 * self.v[n] + (1 - self.beta2) * g * g, self.v[n])
            self.m[n], self.v[n] = m, v
            update = self.lr.view(shape) * (m / c1) / ((v / c2).sqrt() + self.eps)
            p.sub_(torch.where(keep, update, torch.zeros_like(update)))
