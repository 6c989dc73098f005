"""Exact population loss of model 1 (SPEC §2), its closed-form gradient and the metrics of SPEC §3.

For fact (s, r) the logits are a subject part, a relation part and a shared part:

    xi_sr(a) = u_s(a) + u_r(a) + c(a),   c = (T-3) u_noise + u_EOS,   u_z = Wt[z] * K[z].

So ``Z_sr = sum_a exp(xi_sr(a))`` is the matrix product ``E_s @ E_r^T`` with
``E_s = exp(u_s + c)`` (S, |A|) and ``E_r = exp(u_r)`` (R, |A|), and every sum of
``p_hat`` over facts is a matrix product too. One loss-and-gradient evaluation costs
three GEMMs of S*R*|A| multiply-adds and O((S+R)|A|) memory, instead of S*R*|A|
exponentials. Rows are shifted by their maxima before ``exp``; if a normaliser
underflows anyway (possible only far from any plateau) the evaluation falls back
to the direct chunked log-sum-exp, which is exact but slower.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .linear import Layout, layout_of
from .task import Task

_TINY = 1e-250  # below this a shifted normaliser may have lost terms to underflow
_CHUNK_ELEMENTS = 1 << 22  # direct paths work on at most this many (s, r, a) logits at once


class PopulationObjective:
    """Exact population cross-entropy of model 1 on a :class:`Task`, on one torch device/dtype.

    All methods take the compressed state (Wt (C, |A|), K (C,)) of :mod:`models.linear`.
    Gradients are per real token: the noise row is the gradient for one noise token.
    """

    def __init__(self, task: Task, *, dtype=torch.float64, device="cpu"):
        self.task = task
        self.layout: Layout = layout_of(task)
        self.dtype, self.device = dtype, torch.device(device)
        L, S, R, A = self.layout, task.S, task.R, task.num_answers
        kw = dict(dtype=dtype, device=self.device)
        w = task.fact_weights  # (S, R) p(s) q(r)
        self.w = torch.as_tensor(w, **kw)
        self.answers = torch.as_tensor(np.array(task.answers), dtype=torch.long, device=self.device)  # (S, R)
        Ys = np.zeros((S, A))
        Yr = np.zeros((R, A))
        for r in range(R):
            np.add.at(Ys, (np.arange(S), task.answers[:, r]), w[:, r])
            np.add.at(Yr[r], task.answers[:, r], w[:, r])
        self.Ys = torch.as_tensor(Ys, **kw)  # (S, |A|) target mass of each subject's facts
        self.Yr = torch.as_tensor(Yr, **kw)  # (R, |A|)
        P = task.p_answer_given_relation()  # (R, |A|) p(a|r)
        self.P = torch.as_tensor(P, **kw)
        with np.errstate(divide="ignore", invalid="ignore"):
            self.negH = torch.as_tensor(np.where(P > 0, P * np.log(P), 0.0).sum(1), **kw)  # (R,)
        self.mult_noise = float(task.T - 3)
        self.speed = torch.as_tensor(L.speed(), **kw)  # (C,)
        self.count = torch.as_tensor(L.count(), **kw)  # (C,)
        self.fallbacks = 0  # evaluations that needed the direct path

    # ------------------------------------------------------------------ pieces
    def _parts(self, Wt, K):
        L = self.layout
        U = Wt * K[:, None]  # (C, |A|) products u_z(a)
        c = self.mult_noise * U[L.noise] + U[L.eos]  # (|A|,) shared part
        xs = U[: L.S] + c  # (S, |A|) subject part + shared part
        ur = U[L.S: L.S + L.R]  # (R, |A|)
        return xs, ur

    def _normalise(self, xs, ur):
        ms = xs.max(dim=1, keepdim=True).values  # (S, 1)
        mr = ur.max(dim=1, keepdim=True).values  # (R, 1)
        Es = torch.exp(xs - ms)  # (S, |A|)
        Er = torch.exp(ur - mr)  # (R, |A|)
        Zp = Es @ Er.T  # (S, R) shifted normalisers
        logZ = torch.log(Zp) + ms + mr.T  # (S, R)
        return Es, Er, Zp, logZ

    def _target_logit(self, xs, ur):
        a = self.answers  # (S, R)
        return xs.gather(1, a) + ur.T.gather(0, a)  # (S, R) xi_sr(a*(s, r))

    # ------------------------------------------------------------------ loss and gradient
    def loss(self, Wt, K) -> torch.Tensor:
        xs, ur = self._parts(Wt, K)
        Es, Er, Zp, logZ = self._normalise(xs, ur)
        if not bool((Zp > _TINY).all()):
            logZ = self._logZ_direct(xs, ur)
        return (self.w * (logZ - self._target_logit(xs, ur))).sum()

    def grad_u(self, Wt, K):
        """Loss and its gradient with respect to the products, per real token.

        Returns (loss, G) with G (C, |A|): G[z, a] = dL/du[a, z] for one token z
        (subjects, relations, one noise token, EOS).
        """
        L = self.layout
        xs, ur = self._parts(Wt, K)
        Es, Er, Zp, logZ = self._normalise(xs, ur)
        if bool((Zp > _TINY).all()):
            M = self.w / Zp  # (S, R) p(s)q(r)/Z_sr
            Gs = Es * (M @ Er)  # (S, |A|) sum_r w_sr p_hat_sr(a)
            Gr = Er * (M.T @ Es)  # (R, |A|)
        else:
            self.fallbacks += 1
            logZ = self._logZ_direct(xs, ur)
            Gs, Gr = self._phat_sums_direct(xs, ur, logZ)
        loss = (self.w * (logZ - self._target_logit(xs, ur))).sum()
        Gs = Gs - self.Ys
        Gr = Gr - self.Yr
        GE = Gs.sum(0)  # (|A|,) EOS is in every sequence
        Gn = GE * ((self.task.T - 3) / self.task.N)  # one noise token appears (T-3)/N times on average
        G = torch.cat([Gs, Gr, Gn[None], GE[None]])  # (C, |A|)
        return loss, G

    def value_and_grad(self, Wt, K):
        """(loss, dL/dWt (C, |A|), dL/dK (C,)) per real token (noise row: one noise token)."""
        loss, G = self.grad_u(Wt, K)
        return loss, G * K[:, None], (G * Wt).sum(1)

    def flow_rhs(self, y: torch.Tensor) -> torch.Tensor:
        """d y / d t = -grad L on the flat compressed state (P,)."""
        Wt, K = self.layout.unpack(y)
        _, gW, gK = self.value_and_grad(Wt, K)
        return -self.layout.pack(gW, gK)

    def loss_rate(self, Wt, K):
        """(loss, dL/dt) along the exact flow: dL/dt = -sum over all real tokens of |grad|^2."""
        loss, gW, gK = self.value_and_grad(Wt, K)
        sq = (gW * gW).sum(1) + gK * gK  # (C,)
        return loss, -(self.count * sq).sum()

    # ------------------------------------------------------------------ direct (reference) paths
    def _chunks(self):
        S, R, A = self.task.S, self.task.R, self.task.num_answers
        cs = max(1, _CHUNK_ELEMENTS // max(1, R * A))
        for lo in range(0, S, cs):
            yield slice(lo, min(S, lo + cs))

    def _logZ_direct(self, xs, ur):
        out = torch.empty(self.task.S, self.task.R, dtype=xs.dtype, device=xs.device)
        for sl in self._chunks():
            out[sl] = torch.logsumexp(xs[sl, None, :] + ur[None], dim=-1)  # (cs, R, |A|) -> (cs, R)
        return out

    def _phat_sums_direct(self, xs, ur, logZ):
        Gs = torch.empty_like(xs)
        Gr = torch.zeros_like(ur)
        for sl in self._chunks():
            ph = torch.exp(xs[sl, None, :] + ur[None] - logZ[sl, :, None])  # (cs, R, |A|)
            wp = ph * self.w[sl, :, None]
            Gs[sl] = wp.sum(1)
            Gr += wp.sum(0)
        return Gs, Gr

    def fact_logits(self, Wt, K, s: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Logits (n, |A|) of the facts (s[i], r[i]) computed directly from the products."""
        xs, ur = self._parts(Wt, K)
        return xs[s] + ur[r]

    # ------------------------------------------------------------------ metrics (SPEC §3)
    @torch.no_grad()
    def metrics(self, Wt, K, *, accuracy: bool = True) -> dict:
        """Loss, relation-only loss, subject-only loss, accuracy and hallucination gap.

        All are averages over facts with weights p(s) q(r). Accuracy counts a fact as
        correct when its true answer's logit is strictly the largest.
        """
        S, R, D = self.task.S, self.task.R, self.task.D
        xs, ur = self._parts(Wt, K)
        Es, Er, Zp, logZ = self._normalise(xs, ur)
        direct = not bool((Zp > _TINY).all())
        if direct:
            logZ = self._logZ_direct(xs, ur)
        w = self.w
        loss = (w * (logZ - self._target_logit(xs, ur))).sum()
        # relation-only: log of the mass on r's block, sum_{a in A_r} exp(xi_sr(a) - logZ_sr)
        ar = torch.arange(R, device=xs.device)
        xs_blk = xs.view(S, R, D)  # (S, R, D) subject+shared logits on each block
        ur_own = ur.view(R, R, D)[ar, ar]  # (R, D) relation r's logits on its own block
        rel_lse = torch.logsumexp(xs_blk + ur_own[None], dim=-1)  # (S, R)
        relation_loss = (w * (logZ - rel_lse)).sum()
        # subject-only: mass on {a*(s, r') : r'}; blocks are disjoint so the R answers are distinct
        a = self.answers  # (S, R')
        xs_star = xs.gather(1, a)  # (S, R')
        ur_star = ur[:, a]  # (R, S, R')
        subj_lse = torch.logsumexp(xs_star[None] + ur_star, dim=-1).T  # (S, R)
        subject_loss = (w * (logZ - subj_lse)).sum()
        # hallucination gap E KL(p(.|r) || p_hat(.|s, r)): linear in the logits on r's block
        lin = xs @ self.P.T + (self.P * ur).sum(1)[None, :]  # (S, R) sum_a p(a|r) xi_sr(a)
        gap = (w * (self.negH[None, :] - lin + logZ)).sum()
        out = dict(loss=float(loss), relation_loss=float(relation_loss), subject_loss=float(subject_loss),
                   hallucination_gap=float(gap))
        if accuracy:
            out["accuracy"] = float(self.accuracy(xs, ur))
        return out

    def accuracy(self, xs, ur) -> torch.Tensor:
        """Weighted fraction of facts whose true answer has the strictly largest logit."""
        acc = xs.new_zeros(())
        for sl in self._chunks():
            xi = xs[sl, None, :] + ur[None]  # (cs, R, |A|)
            a = self.answers[sl]  # (cs, R)
            target = xi.gather(2, a[..., None])[..., 0]  # (cs, R)
            xi.scatter_(2, a[..., None], -math.inf)
            correct = target > xi.max(dim=2).values
            acc = acc + (self.w[sl] * correct).sum()
        return acc
