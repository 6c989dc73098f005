"""Sampler of the factual-recall task (SPEC §1) on any torch device, vectorized over the batch.

Everything comes from one :class:`models.task.Task`: fact table ``answers`` (S, R),
frequencies ``p`` (S,) and ``q`` (R,), sequence length ``T``, noise count ``N`` and
the token layout (subjects ``[0,S)``, relations ``[S,S+R)``, noise ``[S+R,S+R+N)``,
EOS ``S+R+N``). No Python loop per sequence and no host synchronisation: the draws
use a ``torch.Generator`` living on the sampler's device, so the sampling step can be
captured in a CUDA graph.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.task import Task


@dataclass
class Batch:
    """A batch of ``n`` sequences. tokens (n, T) int64; targets, s, r (n,) int64 (s, r: fact indices)."""

    tokens: torch.Tensor
    targets: torch.Tensor
    s: torch.Tensor
    r: torch.Tensor


class TaskSampler:
    """Draws sequences of SPEC §1: (s, r) ~ p(s) q(r); two distinct positions among the first
    T-1 get s and r; the other T-3 of them i.i.d. uniform noise; position T is EOS; target a*(s, r).

    weights: optional (S, R) fact weights w(s, r) (SPEC §6, e.g. ``Distribution.resolve(task)``); then
    (s, r) is drawn jointly from w (inverse CDF over the S*R facts, float64) instead of p(s) q(r).
    :meth:`set_weights` switches the weights between stages without touching the generator.
    """

    def __init__(self, task: Task, device="cpu", seed: int = 0, weights=None):
        self.task = task
        self.device = torch.device(device)
        dev = self.device
        self.T, self.S, self.R, self.N = task.T, task.S, task.R, task.N
        self.eos = task.eos
        self.answers = torch.tensor(task.answers, dtype=torch.long, device=dev)  # (S, R)
        # inverse-CDF tables (float64 cumulative sums, then float32 on device): no multinomial, no sync
        self.cdf_p = torch.tensor(task.p, dtype=torch.float64).cumsum(0).to(torch.float32).to(dev)  # (S,)
        self.cdf_q = torch.tensor(task.q, dtype=torch.float64).cumsum(0).to(torch.float32).to(dev)  # (R,)
        self.uniform_p = bool(task.config.zipf_subjects == 0)  # then a plain randint (cheaper than searchsorted)
        self.uniform_q = bool(task.config.zipf_relations == 0)
        self.generator = torch.Generator(device=dev)
        self.generator.manual_seed(int(seed))
        self.cdf_w = None  # (S*R,) float64 joint CDF of the fact weights; None: the product p(s) q(r)
        if weights is not None:
            self.set_weights(weights)

    def set_weights(self, weights) -> None:
        """Draw (s, r) from the (S, R) fact weights ``weights`` from now on (None: back to p(s) q(r)).

        The generator is not reset. Switching between two weightings rewrites the CDF in place (same
        tensor), so a CUDA graph captured with weights keeps sampling from the new ones.
        """
        if weights is None:
            self.cdf_w = None
            return
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (self.S, self.R):
            raise ValueError(f"weights have shape {w.shape}; expected (S, R) = ({self.S}, {self.R})")
        if not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
            raise ValueError("weights must be finite, nonnegative and not all zero")
        cdf = torch.tensor(w.reshape(-1), dtype=torch.float64).cumsum(0)  # (S*R,)
        # divided by its own last entry: every entry from the last positive weight on is exactly 1.0, so
        # u < 1 never lands on a trailing zero-weight fact; a zero-weight fact never has cdf > its predecessor
        cdf = cdf / cdf[-1]
        if self.cdf_w is None:
            self.cdf_w = cdf.to(self.device)
        else:
            self.cdf_w.copy_(cdf)

    def _joint(self, n: int, gen):
        """(s, r) (n,) each, drawn jointly from the fact weights (float64 uniforms, no host sync)."""
        f = self._categorical(self.cdf_w, n, gen)  # (n,) flat fact index s * R + r
        return torch.div(f, self.R, rounding_mode="floor"), torch.remainder(f, self.R)

    def _categorical(self, cdf: torch.Tensor, n: int, gen) -> torch.Tensor:
        u = torch.rand(n, device=self.device, generator=gen, dtype=cdf.dtype)  # (n,) in [0, 1)
        idx = torch.searchsorted(cdf, u, right=True)  # (n,) first index with cdf > u
        return idx.clamp_(max=cdf.numel() - 1)  # float rounding of the last cdf entry

    def sample(self, n: int, generator: torch.Generator | None = None) -> Batch:
        """Draw ``n`` sequences (on this sampler's device, with its generator unless one is given)."""
        gen = self.generator if generator is None else generator
        dev, T = self.device, self.T
        if self.cdf_w is not None:
            s, r = self._joint(n, gen)  # (n,) (n,) from the fact weights
        else:
            s = (torch.randint(0, self.S, (n,), device=dev, generator=gen) if self.uniform_p
                 else self._categorical(self.cdf_p, n, gen))  # (n,)
            r = (torch.randint(0, self.R, (n,), device=dev, generator=gen) if self.uniform_q
                 else self._categorical(self.cdf_q, n, gen))  # (n,)
        # noise everywhere first, then EOS at T-1 and the two fact tokens at distinct positions i != j < T-1
        tokens = torch.randint(self.S + self.R, self.S + self.R + self.N, (n, T), device=dev, generator=gen)  # (n, T)
        tokens[:, T - 1] = self.eos
        i = torch.randint(0, T - 1, (n,), device=dev, generator=gen)  # (n,) uniform in {0..T-2}
        j = torch.randint(0, T - 2, (n,), device=dev, generator=gen)  # (n,) uniform over the other T-2
        j = j + (j >= i).long()  # (n,) skip i: uniform over {0..T-2} \ {i}
        tokens.scatter_(1, i[:, None], s[:, None])
        tokens.scatter_(1, j[:, None], (r + self.S)[:, None])
        targets = self.answers[s, r]  # (n,)
        return Batch(tokens=tokens, targets=targets, s=s, r=r)

    def sample_counts(self, n: int, generator: torch.Generator | None = None):
        """Bag-of-tokens draw of ``n`` sequences for models that ignore positions (model 1).

        Same distribution as :meth:`sample` (facts from the weights when set) with the positions summed out: returns
        s, r, targets (n,) int64 and noise counts (n, N) float32, row sums T-3, each row a
        multinomial(T-3, uniform over the N noise tokens). Cheaper than :meth:`sample` + counting.
        """
        gen = self.generator if generator is None else generator
        dev, N = self.device, self.N
        if self.cdf_w is not None:
            s, r = self._joint(n, gen)  # (n,) (n,) from the fact weights
        else:
            s = self._categorical(self.cdf_p, n, gen)  # (n,)
            r = self._categorical(self.cdf_q, n, gen)  # (n,)
        noise = torch.randint(0, N, (n, self.T - 3), device=dev, generator=gen)  # (n, T-3) noise index
        flat = noise + (torch.arange(n, device=dev) * N)[:, None]  # (n, T-3) row-major cell of (n, N)
        counts = torch.zeros(n * N, dtype=torch.float32, device=dev)  # scatter, not bincount: no host sync on CUDA
        counts.scatter_add_(0, flat.reshape(-1), torch.ones(flat.numel(), dtype=torch.float32, device=dev))
        counts = counts.view(n, N)  # (n, N)
        return s, r, self.answers[s, r], counts
