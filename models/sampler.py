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

from .task import Task


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
    """

    def __init__(self, task: Task, device="cpu", seed: int = 0):
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

    def _categorical(self, cdf: torch.Tensor, n: int, gen) -> torch.Tensor:
        u = torch.rand(n, device=self.device, generator=gen, dtype=cdf.dtype)  # (n,) in [0, 1)
        idx = torch.searchsorted(cdf, u, right=True)  # (n,) first index with cdf > u
        return idx.clamp_(max=cdf.numel() - 1)  # float rounding of the last cdf entry

    def sample(self, n: int, generator: torch.Generator | None = None) -> Batch:
        """Draw ``n`` sequences (on this sampler's device, with its generator unless one is given)."""
        gen = self.generator if generator is None else generator
        dev, T = self.device, self.T
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

        Same distribution as :meth:`sample` with the positions summed out: returns
        s, r, targets (n,) int64 and noise counts (n, N) float32, row sums T-3, each row a
        multinomial(T-3, uniform over the N noise tokens). Cheaper than :meth:`sample` + counting.
        """
        gen = self.generator if generator is None else generator
        dev, N = self.device, self.N
        s = self._categorical(self.cdf_p, n, gen)  # (n,)
        r = self._categorical(self.cdf_q, n, gen)  # (n,)
        noise = torch.randint(0, N, (n, self.T - 3), device=dev, generator=gen)  # (n, T-3) noise index
        flat = noise + (torch.arange(n, device=dev) * N)[:, None]  # (n, T-3) row-major cell of (n, N)
        counts = torch.zeros(n * N, dtype=torch.float32, device=dev)  # scatter, not bincount: no host sync on CUDA
        counts.scatter_add_(0, flat.reshape(-1), torch.ones(flat.numel(), dtype=torch.float32, device=dev))
        counts = counts.view(n, N)  # (n, N)
        return s, r, self.answers[s, r], counts
