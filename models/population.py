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
        # the targets are sparse (S*R entries): subtract them by index, not with a dense (S, |A|) pass
        a = task.answers
        self._ys_idx = torch.as_tensor((np.arange(S)[:, None] * A + a).reshape(-1), device=self.device)
        self._yr_idx = torch.as_tensor((np.arange(R)[None, :] * A + a).reshape(-1), device=self.device)
        self._neg_w = -torch.as_tensor(w.reshape(-1), **kw)  # (S*R,)
        P = task.p_answer_given_relation()  # (R, |A|) p(a|r)
        self.P = torch.as_tensor(P, **kw)
        with np.errstate(divide="ignore", invalid="ignore"):
            self.negH = torch.as_tensor(np.where(P > 0, P * np.log(P), 0.0).sum(1), **kw)  # (R,)
        self.mult_noise = float(task.T - 3)
        self.speed = torch.as_tensor(L.speed(), **kw)  # (C,)
        self.count = torch.as_tensor(L.count(), **kw)  # (C,)
        self.fallbacks = 0  # evaluations that needed the direct path

    # ------------------------------------------------------------------ pieces
    def _buffer(self, name, shape):
        """Work arrays reused across calls: at |A| ~ 1000 fresh 8 MB allocations cost more than the math."""
        buf = getattr(self, name, None)
        if buf is None or buf.shape != shape:
            buf = torch.empty(shape, dtype=self.dtype, device=self.device)
            setattr(self, name, buf)
        return buf

    def _parts(self, Wt, K):
        """Subject+shared logits xs (S, |A|) (a reused buffer) and relation logits ur (R, |A|)."""
        L = self.layout
        S, R = L.S, L.R
        c = (self.mult_noise * K[L.noise]) * Wt[L.noise] + K[L.eos] * Wt[L.eos]  # (|A|,) shared part
        xs = torch.mul(Wt[:S], K[:S, None], out=self._buffer("_xs", (S, L.A)))  # (S, |A|) u_s
        xs.add_(c)  # u_s + c
        ur = Wt[S:S + R] * K[S:S + R, None]  # (R, |A|) u_r
        return xs, ur

    def _normalise(self, xs, ur):
        ms = xs.amax(dim=1, keepdim=True)  # (S, 1)
        mr = ur.amax(dim=1, keepdim=True)  # (R, 1)
        Es = torch.sub(xs, ms, out=self._buffer("_Es", xs.shape)).exp_()  # (S, |A|)
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

    def _grad_u_into(self, Wt, K, G, need_loss: bool = True):
        """Fill G (C, |A|) with dL/du per real token; return the loss (0-d tensor, or None)."""
        L = self.layout
        S, R = L.S, L.R
        xs, ur = self._parts(Wt, K)
        Es, Er, Zp, logZ = self._normalise(xs, ur)
        Gs, Gr = G[:S], G[S:S + R]  # views: (S, |A|), (R, |A|)
        if bool((Zp > _TINY).all()):
            M = self.w / Zp  # (S, R) p(s)q(r)/Z_sr
            torch.mm(M, Er, out=Gs).mul_(Es)  # (S, |A|) sum_r w_sr p_hat_sr(a)
            torch.mm(M.T, Es, out=Gr).mul_(Er)  # (R, |A|)
        else:
            self.fallbacks += 1
            logZ = self._logZ_direct(xs, ur)
            self._phat_sums_direct(xs, ur, logZ, Gs, Gr)
        loss = (self.w * (logZ - self._target_logit(xs, ur))).sum() if need_loss else None
        Gs.view(-1).index_add_(0, self._ys_idx, self._neg_w)  # - Ys
        Gr.view(-1).index_add_(0, self._yr_idx, self._neg_w)  # - Yr
        torch.sum(Gs, 0, out=G[L.eos])  # (|A|,) EOS is in every sequence
        torch.mul(G[L.eos], (self.task.T - 3) / self.task.N, out=G[L.noise])  # a noise token: (T-3)/N per sequence
        return loss

    def grad_u(self, Wt, K):
        """Loss and its gradient with respect to the products, per real token.

        Returns (loss, G) with G (C, |A|): G[z, a] = dL/du[a, z] for one token z
        (subjects, relations, one noise token, EOS).
        """
        G = torch.empty(self.layout.C, self.layout.A, dtype=self.dtype, device=self.device)
        return self._grad_u_into(Wt, K, G), G

    def value_and_grad(self, Wt, K):
        """(loss, dL/dWt (C, |A|), dL/dK (C,)) per real token (noise row: one noise token)."""
        loss, G = self.grad_u(Wt, K)
        return loss, G * K[:, None], torch.linalg.vecdot(G, Wt)

    def flow_rhs(self, y: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """d y / d t = -grad L on the flat compressed state (P,), into ``out`` or a new tensor."""
        L = self.layout
        Wt, K = L.unpack(y)
        G = self._buffer("_G", (L.C, L.A))
        self._grad_u_into(Wt, K, G, need_loss=False)
        if out is None:
            out = torch.empty_like(y)
        dW, dK = L.unpack(out)
        torch.mul(G, -K[:, None], out=dW)  # dW/dt = -G K
        torch.linalg.vecdot(G, Wt, out=dK).neg_()  # dK/dt = -sum_a G W
        return out

    def loss_rate(self, Wt, K):
        """(loss, dL/dt) along the exact flow: dL/dt = -sum over all real tokens of |grad|^2.

        |dL/dW_z|^2 = K_z^2 |G_z|^2 and dL/dK_z = <G_z, W_z>; the noise row counts N times.
        """
        L = self.layout
        G = self._buffer("_G", (L.C, L.A))
        loss = self._grad_u_into(Wt, K, G)
        sq = K * K * torch.linalg.vecdot(G, G) + torch.linalg.vecdot(G, Wt) ** 2  # (C,)
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

    def _phat_sums_direct(self, xs, ur, logZ, Gs, Gr):
        Gr.zero_()
        for sl in self._chunks():
            ph = torch.exp(xs[sl, None, :] + ur[None] - logZ[sl, :, None])  # (cs, R, |A|)
            wp = ph * self.w[sl, :, None]
            Gs[sl] = wp.sum(1)
            Gr += wp.sum(0)

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
        """Weighted fraction of facts whose true answer has the strictly largest logit.

        Exact, but avoids the S*R*|A| pass for most facts: the best wrong answer inside
        r's block is computed exactly (S*|A| work); outside the block its logit is at most
        (best xs outside the block) + (best ur outside the block). Facts this bound
        decides are settled; the rest are checked directly.
        """
        S, R, D = self.task.S, self.task.R, self.task.D
        a = self.answers  # (S, R)
        ar = torch.arange(R, device=xs.device)
        target = self._target_logit(xs, ur)  # (S, R)
        blk = xs.view(S, R, D) + ur.view(R, R, D)[ar, ar][None]  # (S, R, D) logits on r's own block
        blk.scatter_(2, (a - ar[None] * D)[..., None], -math.inf)
        inside = blk.amax(2)  # (S, R) best wrong answer inside the block
        bm = xs.view(S, R, D).amax(2)  # (S, R') best subject+shared logit per block
        top2 = bm.topk(min(2, R), dim=1)
        if R > 1:
            # best over blocks r' != r: the top block unless it is r itself, then the second
            xs_out = torch.where(top2.indices[:, :1] == ar[None], top2.values[:, 1:2], top2.values[:, :1])
            ur_bm = ur.view(R, R, D).amax(2)  # (R, R') best relation logit per block
            ur_bm[ar, ar] = -math.inf
            ur_out = ur_bm.amax(1)  # (R,)
            outside = xs_out + ur_out[None]  # (S, R) upper bound of wrong answers outside the block
        else:
            outside = torch.full_like(target, -math.inf)
        sure = target > torch.maximum(inside, outside)
        undecided = (target > inside) & ~sure
        correct = sure.to(xs.dtype)
        idx = undecided.nonzero()  # (n, 2)
        n = idx.shape[0]
        if n:
            step = max(1, _CHUNK_ELEMENTS // self.task.num_answers)
            for lo in range(0, n, step):
                s_i, r_i = idx[lo:lo + step, 0], idx[lo:lo + step, 1]
                xi = xs[s_i] + ur[r_i]  # (m, |A|)
                t_i = target[s_i, r_i]
                xi.scatter_(1, a[s_i, r_i][:, None], -math.inf)
                correct[s_i, r_i] = (t_i > xi.amax(1)).to(xs.dtype)
        self.accuracy_direct_facts = n
        return (self.w * correct).sum()
