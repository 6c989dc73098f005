"""The exact population flow of B tasks of one shape as one batched right-hand side on states (B, P).

Used by :mod:`dynamics.flow.batched`; per run identical in exact arithmetic to
:meth:`models.population.PopulationObjective.flow_rhs`.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

_TINY = 1e-250  # as models.population: below this a shifted normaliser may have lost terms to underflow


class BatchedObjective:
    """The exact population flow of B tasks of one shape: ``rhs(Y, out)`` on states (B, P).

    Per run identical in exact arithmetic to PopulationObjective.flow_rhs (same formulas, batched GEMMs).
    ``objectives[i]`` is run i's own PopulationObjective (fallback and event losses).
    """

    def __init__(self, objectives: list, *, dtype=torch.float64, device="cpu", rows=None):
        self.objectives = list(objectives)
        self.layout = objectives[0].layout
        self.dtype, self.device = dtype, torch.device(device)
        kw = dict(dtype=dtype, device=self.device)
        # every run's tables (indexed by run); the active rows are gathered from them
        self._w = torch.stack([o.w for o in objectives]).to(**kw)  # (n, S, R)
        self._Ys = torch.stack([o.Ys for o in objectives]).to(**kw)  # (n, S, |A|)
        self._Yr = torch.stack([o.Yr for o in objectives]).to(**kw)  # (n, R, |A|)
        self._answers = torch.stack([o.answers for o in objectives]).to(self.device)  # (n, S, R)
        T, N = objectives[0].task.T, objectives[0].task.N
        self.mult_noise = float(T - 3)
        self.noise_speed = (T - 3) / N
        self.fallbacks = np.zeros(len(objectives), dtype=np.int64)
        self._bufs = {}
        self._set(torch.arange(len(objectives), device=self.device) if rows is None
                  else torch.as_tensor(rows, dtype=torch.long, device=self.device))

    def _set(self, idx: torch.Tensor) -> None:
        self.idx = idx  # (B,) run index of each active row
        self.w, self.Ys, self.Yr, self.answers = self._w[idx], self._Ys[idx], self._Yr[idx], self._answers[idx]

    def buffer(self, name: str, shape) -> torch.Tensor:
        """A work array reused across calls (fresh ~1 MB tensors per call cost page faults, not math)."""
        shape = tuple(shape)
        buf = self._bufs.get(name)
        if buf is None or tuple(buf.shape) != shape:
            buf = torch.empty(shape, dtype=self.dtype, device=self.device)
            self._bufs[name] = buf
        return buf

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the rows ``keep`` (a LongTensor of row positions)."""
        self._set(self.idx[keep])

    def admit(self, runs) -> None:
        """Append rows for the runs ``runs`` (run indices) after the active ones."""
        self._set(torch.cat([self.idx, torch.as_tensor(runs, dtype=torch.long, device=self.device)]))

    def view(self, runs) -> "BatchedObjective":
        """The same objective on the rows ``runs`` only (its own work arrays; fallback counts shared)."""
        v = copy.copy(self)
        v._bufs = {}
        v._set(torch.as_tensor(runs, dtype=torch.long, device=self.device))
        return v

    def rhs(self, Y: torch.Tensor, out: torch.Tensor, need_loss: bool = False):
        """Write dY/dt = -grad L per row into ``out`` (B, P); return the losses (B,) numpy if need_loss."""
        L = self.layout
        S, R, C, A = L.S, L.R, L.C, L.A
        B = Y.shape[0]
        n = C * A
        Wt = Y[:, :n].view(B, C, A)
        K = Y[:, n:]
        c = (self.mult_noise * K[:, L.noise, None]) * Wt[:, L.noise] + K[:, L.eos, None] * Wt[:, L.eos]  # (B, |A|)
        xs = torch.mul(Wt[:, :S], K[:, :S, None], out=self.buffer("xs", (B, S, A)))
        xs.add_(c[:, None])  # (B, S, |A|) u_s + c
        ur = torch.mul(Wt[:, S:S + R], K[:, S:S + R, None], out=self.buffer("ur", (B, R, A)))  # (B, R, |A|)
        xs.sub_(xs.amax(dim=2, keepdim=True))
        ur.sub_(ur.amax(dim=2, keepdim=True))
        Es = torch.exp(xs, out=self.buffer("Es", (B, S, A)))
        Er = torch.exp(ur, out=self.buffer("Er", (B, R, A)))
        Zp = torch.bmm(Es, Er.transpose(1, 2))  # (B, S, R)
        M = self.w / Zp
        G = self.buffer("G", (B, C, A))
        Gs = torch.bmm(M, Er, out=self.buffer("Gs", (B, S, A))).mul_(Es).sub_(self.Ys)  # sum_r w p_hat - Ys
        Gr = torch.bmm(M.transpose(1, 2), Es, out=self.buffer("Gr", (B, R, A))).mul_(Er).sub_(self.Yr)
        G[:, :S].copy_(Gs)  # (bmm into a strided slice is 4x slower than into its own array)
        G[:, S:S + R].copy_(Gr)
        torch.sum(Gs, 1, out=G[:, L.eos])
        torch.mul(G[:, L.eos], self.noise_speed, out=G[:, L.noise])
        dW = out[:, :n].view(B, C, A)
        torch.mul(G, K[:, :, None], out=dW).neg_()
        torch.sum(G.mul_(Wt), 2, out=out[:, n:]).neg_()
        losses = None
        if need_loss:
            a = self.answers  # (B, S, R)
            target = xs.gather(2, a) + ur.transpose(1, 2).gather(1, a)  # (B, S, R)
            losses = (self.w * (torch.log(Zp) - target)).sum((1, 2)).numpy().copy()
        if not float(Zp.amin()) > _TINY:  # the single run takes its direct path here: do exactly that for these rows
            bad = ~(Zp > _TINY).flatten(1).all(1)
            for i in bad.nonzero()[:, 0].tolist():
                j = int(self.idx[i])
                obj = self.objectives[j]
                self.fallbacks[j] += 1
                obj.flow_rhs(Y[i], out[i])
                if need_loss:
                    Wt_i, K_i = L.unpack(Y[i])
                    losses[i] = float(obj.loss(Wt_i, K_i))
        return losses
