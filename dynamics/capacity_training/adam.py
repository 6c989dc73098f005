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
        everyone = bool(active.all())
        for n, p in params.items():
            shape = (-1,) + (1,) * (p.dim() - 1)  # broadcast (B,) over a model's entries
            g = grads[n]
            # the same operations whether or not some models are frozen, so that a model's arithmetic does
            # not depend on its batch (the batched run equals the single runs bit for bit on one thread)
            m = torch.mul(self.m[n], self.beta1).add_(g, alpha=1 - self.beta1)
            v = torch.mul(self.v[n], self.beta2).addcmul_(g, g, value=1 - self.beta2)
            update = torch.div(v, c2).sqrt_().add_(self.eps)                    # denominator
            update = torch.div(m, c1).div_(update).mul_(self.lr.view(shape))   # lr · m̂ / (√v̂ + ε)
            if everyone:
                self.m[n], self.v[n] = m, v
                p.sub_(update)
            else:
                keep = active.view(shape)
                self.m[n] = torch.where(keep, m, self.m[n])
                self.v[n] = torch.where(keep, v, self.v[n])
                p.sub_(update.mul_(keep))
