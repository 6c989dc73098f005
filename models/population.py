"""Exact population loss of model 1 (SPEC §2), its closed-form gradient and the metrics of SPEC §3.

For fact (s, r) the logits are a subject part, a relation part and a shared part:

    xi_sr(a) = u_s(a) + u_r(a) + c(a),   c = (T-3) u_noise + u_EOS,   u_z = Wt[z] * K[z].

So ``Z_sr = sum_a exp(xi_sr(a))`` is the matrix product ``E_s @ E_r^T`` with
``E_s = exp(u_s + c)`` (S, |A|) and ``E_r = exp(u_r)`` (R, |A|), and every sum of
``p_hat`` over facts is a matrix product too. One loss-and-gradient evaluation costs
three GEMMs of S*R*|A| multiply-adds and O((S+R)|A|) memory, instead of S*R*|A|
exponentials. If a normaliser underflows anyway (possible only far from any plateau)
the evaluation falls back to the direct chunked log-sum-exp, which is exact but slower.

Relative logits (no cancellation at any scale). The rows of the two parts are shifted
by their maxima in place, ``xs[s] -= ms[s]``, ``ur[r] -= mr[r]``, and nothing is ever
added back: every loss, metric and gradient depends on the logits of a fact only
through differences between them, so all are computed from the relative logits
``xs[s] + ur[r]`` (all <= 0) and ``log Zp_sr = log Z_sr - ms_s - mr_r``. The size of
the logits themselves (~alpha^2, 1e21 at alpha = 1e10) never meets an O(1) number:
a fact's loss is ``log Zp - (relative target logit)``, both of the size of the logit
*gaps*. The direct path goes one step further and references each fact to its own
largest logit ``ref_sr``, keeping ``lse_sr = log sum_a exp(xi - ref) in [0, log|A|]``
and ``ref - target`` (a gap) apart.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from models.linear import Layout, layout_of
from models.task import Task

_TINY = 1e-250  # below this a shifted normaliser may have lost terms to underflow
_CHUNK_ELEMENTS = 1 << 22  # direct paths work on at most this many (s, r, a) logits at once
_LOG2_SURE = math.log(2.0) - 1e-6  # a fact loss below this: the true answer has p > 1/2, so the strict argmax


def _version(t: torch.Tensor):
    """torch's in-place write counter of ``t``, or None for inference tensors (which do not keep one)."""
    try:
        return t._version
    except RuntimeError:
        return None


@dataclass(frozen=True, eq=False)
class EvalSet:
    """An evaluation weighting v(s, r) prepared for :meth:`PopulationObjective.metrics`.

    w: (S, R) weights; P_own: (R, D) p_v(a|r) on each relation's block; negH: (R,) sum_a p log p;
    H_A_given_R: the relation-only loss H_v(A|R) in nats.
    """

    w: torch.Tensor
    P_own: torch.Tensor
    negH: torch.Tensor
    H_A_given_R: float


class PopulationObjective:
    """Exact population cross-entropy of model 1 on a :class:`Task`, on one torch device/dtype.

    All methods take the compressed state (Wt (C, |A|), K (C,)) of :mod:`models.linear`.
    Gradients are per real token: the noise row is the gradient for one noise token.
    """

    def __init__(self, task: Task, *, weights: np.ndarray | None = None, dtype=torch.float64, device="cpu"):
        """weights: (S, R) fact weights w(s, r) >= 0 summing to 1 (SPEC §6; default the task's p(s) q(r))."""
        self.task = task
        self.layout: Layout = layout_of(task)
        self.dtype, self.device = dtype, torch.device(device)
        L, S, R, A = self.layout, task.S, task.R, task.num_answers
        kw = dict(dtype=dtype, device=self.device)
        w = task.fact_weights if weights is None else np.asarray(weights, dtype=np.float64)  # (S, R)
        if w.shape != (S, R) or not np.all(w >= 0) or not abs(w.sum() - 1.0) < 1e-12:
            raise ValueError(f"weights must be an (S, R) = ({S}, {R}) array of nonnegative numbers summing to 1 "
                             "(use models.weights.normalized)")
        self.weights = w
        self.w = torch.as_tensor(np.array(w), **kw)  # a copy: w may be a read-only array
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
        self._neg_w = -torch.as_tensor(np.array(w).reshape(-1), **kw)  # (S*R,)
        P = task.p_answer_given_relation(None if weights is None else w)  # (R, |A|) p(a|r) under w
        self.P = torch.as_tensor(P, **kw)
        self.train_set = self.eval_set(w, _P=P)  # the metrics of SPEC §3 use the training weights
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
        self._rhs_last = None  # the buffer xs is about to be overwritten: forget the last right-hand side's pieces
        L = self.layout
        S, R = L.S, L.R
        c = (self.mult_noise * K[L.noise]) * Wt[L.noise] + K[L.eos] * Wt[L.eos]  # (|A|,) shared part
        xs = torch.mul(Wt[:S], K[:S, None], out=self._buffer("_xs", (S, L.A)))  # (S, |A|) u_s
        xs.add_(c)  # u_s + c
        ur = Wt[S:S + R] * K[S:S + R, None]  # (R, |A|) u_r
        return xs, ur

    def _normalise(self, xs, ur):
        """Shift xs, ur IN PLACE to their row maxima; return Es = exp(xs), Er = exp(ur), Zp = Es @ Er^T.

        Afterwards xs[s] + ur[r] are the logits of fact (s, r) relative to ms[s] + mr[r] (all <= 0,
        largest entry of each row 0) and log Zp_sr is log Z_sr relative to the same reference.
        """
        xs.sub_(xs.amax(dim=1, keepdim=True))  # (S, |A|) relative subject+shared logits
        ur.sub_(ur.amax(dim=1, keepdim=True))  # (R, |A|) relative relation logits
        Es = torch.exp(xs, out=self._buffer("_Es", xs.shape))  # (S, |A|)
        Er = torch.exp(ur)  # (R, |A|)
        Zp = Es @ Er.T  # (S, R) shifted normalisers
        return Es, Er, Zp

    def _target_logit(self, xs, ur):
        """(S, R) xi_sr(a*(s, r)), the target logits on the parts given (a new tensor)."""
        ix = self._metric_indices()
        return xs.view(-1).take(ix["ans_s"]).add_(ur.view(-1).take(ix["ans_r"]))

    def _fact_losses(self, xs, ur, lse, ref, out=None, target=None):
        """(S, R) per-fact cross-entropies lse - (target - ref) on relative logits (ref None: 0).

        target: the (S, R) target logits of :meth:`_target_logit` when at hand (then overwritten when ref is given).
        """
        target = self._target_logit(xs, ur) if target is None else target
        if ref is not None:
            target.sub_(ref)  # minus a gap of the same fact: no large numbers left
        return torch.sub(lse, target, out=out)

    def _weighted(self, fact, weights=None) -> torch.Tensor:
        """sum_sr w_sr fact_sr (0-d): the one reduction of per-fact losses into the loss (loss, RHS reuse, metrics)."""
        # torch's sum reduces in cascades (error ~ log n ulp), BLAS dot accumulates in sequence (~ n ulp): at
        # S*R ~ 3e4 facts that is 1e-13 against 1e-16 relative
        return ((self.w if weights is None else weights) * fact).sum()

    def _log_normalisers(self, xs, ur, Zp):
        """(lse, ref) with log Z_sr = ref_sr + lse_sr relative to the shifted parts (ref None: 0).

        log Zp when every shifted normaliser is safely above underflow, else the direct chunked path.
        """
        if bool((Zp > _TINY).all()):
            return torch.log(Zp), None
        return self._direct(xs, ur)

    # ------------------------------------------------------------------ loss and gradient
    def loss(self, Wt, K, weights: torch.Tensor | None = None) -> torch.Tensor:
        """The population loss (0-d tensor) under the training weights, or under ``weights`` (S, R) if given."""
        xs, ur = self._parts(Wt, K)
        _, _, Zp = self._normalise(xs, ur)
        lse, ref = self._log_normalisers(xs, ur, Zp)
        return self._weighted(self._fact_losses(xs, ur, lse, ref), weights)

    def _grad_u_into(self, Wt, K, G, need_loss: bool = True):
        """Fill G (C, |A|) with dL/du per real token; return the loss (0-d tensor, or None)."""
        xs, ur = self._parts(Wt, K)
        Es, Er, Zp = self._normalise(xs, ur)
        return self._grad_from(xs, ur, Es, Er, Zp, G, need_loss)

    def _grad_from(self, xs, ur, Es, Er, Zp, G, need_loss: bool):
        """The gradient pass after :meth:`_normalise` (shared by the RHS and the monitor's metrics)."""
        L = self.layout
        S, R = L.S, L.R
        Gs, Gr = G[:S], G[S:S + R]  # views: (S, |A|), (R, |A|)
        self._zp_ok = bool((Zp > _TINY).all())
        if self._zp_ok:
            M = self.w / Zp  # (S, R) p(s)q(r)/Z_sr
            torch.mm(M, Er, out=Gs).mul_(Es)  # (S, |A|) sum_r w_sr p_hat_sr(a)
            torch.mm(M.T, Es, out=Gr).mul_(Er)  # (R, |A|)
            lse, ref = (torch.log(Zp), None) if need_loss else (None, None)
        else:
            self.fallbacks += 1
            lse, ref = self._direct(xs, ur, Gs, Gr)
        loss = self._weighted(self._fact_losses(xs, ur, lse, ref)) if need_loss else None
        Gs.view(-1).index_add_(0, self._ys_idx, self._neg_w)  # - Ys
        Gr.view(-1).index_add_(0, self._yr_idx, self._neg_w)  # - Yr
        torch.sum(Gs, 0, out=G[L.eos])  # (|A|,) EOS is in every sequence
        torch.mul(G[L.eos], (self.task.T - 3) / self.task.N, out=G[L.noise])  # a noise token: (T-3)/N per sequence
        return loss

    def _rate_from_grad(self, Wt, K, G) -> torch.Tensor:
        """dL/dt = -sum over all real tokens of |grad|^2 (noise row counted N times), from G = dL/du.

        Overwrites G (its callers need only the rate). vector_norm and a multiply-and-sum instead of
        linalg.vecdot: measured 4x and 1.4x faster at (C, |A|) = (1058, 1024).
        """
        g2 = torch.linalg.vector_norm(G, dim=1).square_()  # (C,) |G_z|^2
        gw = G.mul_(Wt).sum(1)  # (C,) <G_z, W_z>
        return -(self.count * (K * K * g2 + gw * gw)).sum()

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
        xs, ur = self._parts(Wt, K)
        Es, Er, Zp = self._normalise(xs, ur)
        self._grad_from(xs, ur, Es, Er, Zp, G, need_loss=False)
        # keep the relative logits and normalisers of this state (references, no copy) until the next evaluation:
        # a solver's last evaluation of a step is at the step's end, where the loss is asked for next
        # (:meth:`loss_at_last_rhs`)
        self._rhs_last = (y, y.data_ptr(), _version(y), y[:: max(1, y.numel() // 61)].clone(), xs, ur, Zp,
                          self._zp_ok)
        if out is None:
            out = torch.empty_like(y)
        dW, dK = L.unpack(out)
        torch.mul(G, -K[:, None], out=dW)  # dW/dt = -G K
        torch.sum(G.mul_(Wt), 1, out=dK).neg_()  # dK/dt = -sum_a G W (G is a work buffer: 1.4x linalg.vecdot's speed)
        return out

    def loss_at_last_rhs(self, y: torch.Tensor):
        """The loss (0-d tensor) at the flat state y if the last :meth:`flow_rhs` evaluation was at this very tensor
        and nothing has evaluated this objective since, else None. Bit for bit :meth:`loss` (the same relative
        logits and normalisers, the same reduction), without a second forward pass.

        Guard: the same tensor object and storage, no in-place write since that evaluation (torch's version
        counter, which every in-place operation on the tensor or a view of it increments), and a strided sample
        of its entries unchanged.
        """
        last = getattr(self, "_rhs_last", None)
        if last is None or last[0] is not y or y.data_ptr() != last[1] or last[2] is None or _version(y) != last[2]:
            return None  # inference tensors carry no version counter: no proof of "unchanged", no reuse
        _, _, _, sample, xs, ur, Zp, zp_ok = last
        if not zp_ok or not torch.equal(y[:: max(1, y.numel() // 61)], sample):
            return None
        return self._weighted(self._fact_losses(xs, ur, torch.log(Zp), None))

    def loss_rate(self, Wt, K):
        """(loss, dL/dt) along the exact flow: dL/dt = -sum over all real tokens of |grad|^2.

        |dL/dW_z|^2 = K_z^2 |G_z|^2 and dL/dK_z = <G_z, W_z>; the noise row counts N times.
        """
        L = self.layout
        G = self._buffer("_G", (L.C, L.A))
        loss = self._grad_u_into(Wt, K, G)
        return loss, self._rate_from_grad(Wt, K, G)

    # ------------------------------------------------------------------ direct (reference) paths
    def _chunks(self):
        S, R, A = self.task.S, self.task.R, self.task.num_answers
        cs = max(1, _CHUNK_ELEMENTS // max(1, R * A))
        for lo in range(0, S, cs):
            yield slice(lo, min(S, lo + cs))

    def _direct(self, xs, ur, Gs=None, Gr=None):
        """Direct chunked log-sum-exp, each fact referenced to its own largest logit.

        Returns (lse, ref) (S, R): log Z_sr = ref_sr + lse_sr relative to the parts given, with
        lse in [0, log|A|]. When Gs, Gr are given, fills them with sum_r w_sr p_hat_sr and
        sum_s w_sr p_hat_sr, p_hat = exp(xi - ref) / exp(lse) (no log of a large number involved).
        """
        S, R = self.task.S, self.task.R
        lse = torch.empty(S, R, dtype=xs.dtype, device=xs.device)
        ref = torch.empty(S, R, dtype=xs.dtype, device=xs.device)
        if Gr is not None:
            Gr.zero_()
        for sl in self._chunks():
            d = xs[sl, None, :] + ur[None]  # (cs, R, |A|) logits of the chunk's facts
            m = d.amax(-1, keepdim=True)  # (cs, R, 1)
            e = d.sub_(m).exp_()  # exp(xi - ref), largest entry 1
            z = e.sum(-1)  # (cs, R) in [1, |A|]
            lse[sl] = torch.log(z)
            ref[sl] = m[..., 0]
            if Gs is not None:
                wp = e.mul_((self.w[sl] / z)[..., None])  # w_sr p_hat_sr(a)
                Gs[sl] = wp.sum(1)
                Gr += wp.sum(0)
        return lse, ref

    def fact_logits(self, Wt, K, s: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Logits (n, |A|) of the facts (s[i], r[i]) computed directly from the products."""
        xs, ur = self._parts(Wt, K)
        return xs[s] + ur[r]

    # ------------------------------------------------------------------ metrics (SPEC §3)
    def eval_set(self, weights: np.ndarray, _P: np.ndarray | None = None) -> "EvalSet":
        """Precompute an evaluation weighting v(s, r) (SPEC §6): (S, R) nonnegative, summing to 1."""
        task, R, D = self.task, self.task.R, self.task.D
        v = np.asarray(weights, dtype=np.float64)
        P = task.p_answer_given_relation(v) if _P is None else _P  # (R, |A|) p_v(a|r)
        own = np.repeat(np.arange(R), D)[None, :] == np.arange(R)[:, None]  # (R, |A|) r's own block
        if np.any(P[~own]):
            raise ValueError("p(a|r) must vanish outside relation r's block (answers outside their block)")
        with np.errstate(divide="ignore", invalid="ignore"):
            negH = np.where(P > 0, P * np.log(P), 0.0).sum(1)  # (R,) sum_a p log p
        kw = dict(dtype=self.dtype, device=self.device)
        return EvalSet(w=torch.as_tensor(np.array(v), **kw), P_own=torch.as_tensor(P[own].reshape(R, D), **kw),
                       negH=torch.as_tensor(negH, **kw), H_A_given_R=float(-(v.sum(0) @ negH)))

    def _metric_indices(self):
        """Flat index tensors of the metrics' fast path (built once; they depend only on the task).

        own (R, D): ur.view(-1)[own] is relation r's logits on its own block; ans_s (S, R): xs.view(-1)[ans_s] is
        xs[s, a*(s, r)]; ans_r (S, R): ur.view(-1)[ans_r] is ur[r, a*(s, r)];
        ans_flat (S*R,): the true answers a*(s, r) in row-major order; blk_ans (S*R,): the true answers' places in an
        (S, R, D) block array; ar: arange(R); diag (R, R): -inf on the diagonal, 0 off it.
        """
        idx = getattr(self, "_midx", None)
        if idx is None:
            S, R, D, A = self.task.S, self.task.R, self.task.D, self.task.num_answers
            dev = self.device
            a = self.answers  # (S, R)
            r = torch.arange(R, device=dev)
            s = torch.arange(S, device=dev)
            idx = dict(own=r[:, None] * (A + D) + torch.arange(D, device=dev)[None, :],  # (R, D) r*A + r*D + d
                       ans_s=s[:, None] * A + a, ans_r=r[None, :] * A + a,
                       ans_flat=a.reshape(-1),
                       blk_ans=((s[:, None] * R + r[None, :]) * D + (a - r[None, :] * D)).reshape(-1),
                       ar=r, diag=torch.diag(torch.full((R,), -math.inf, dtype=self.dtype, device=dev)))  # (R, R)
            self._midx = idx
        return idx

    def _marginal_losses(self, xs, ur, Es, Er, lse, ref, ur_own, F, srd) -> None:
        """The relation-only and subject-only losses per fact into F[1], F[2] (see :meth:`metrics`): from the masses
        of the exponentials at hand, or by log-sum-exp where a mass may have underflowed."""
        S, R, D = self.task.S, self.task.R, self.task.D
        ix = self._metric_indices()
        done = False
        if ref is None:
            # Fast path: the masses are sums of products of the exponentials already at hand (no new exp):
            # relation r's block, sum_{a in A_r} Es[s, a] Er[r, a], and subject s's answers,
            # sum_r' Es[s, a*(s, r')] Er[r, a*(s, r')] (the R answers are distinct: blocks are disjoint).
            mass = F[1:3]  # (2, S, R)
            torch.sum(torch.mul(Es.view(S, R, D), Er.view(-1).take(ix["own"]), out=srd), -1, out=mass[0])
            Ec = torch.index_select(Er.T.contiguous(), 0, ix["ans_flat"], out=self._buffer("_Ec", (S * R, R)))
            Ec = Ec.view(S, R, R)  # (S, R', R) Er[r, a*(s, r')]
            torch.bmm(Es.view(-1).take(ix["ans_s"])[:, None, :], Ec, out=mass[1].view(S, 1, R))
            if bool((mass > _TINY).all()):
                torch.sub(lse, mass.log_(), out=mass)  # relation, subject losses
                done = True
        if not done:
            # a mass may have underflowed: log-sum-exp over the block and over the subject's answers
            a = self.answers
            blk = xs.view(S, R, D) + ur_own[None]  # (S, R, D) logits of (s, r) on r's block
            if ref is not None:
                blk = blk - ref[..., None]
            torch.sub(lse, torch.logsumexp(blk, dim=-1), out=F[1])
            star = xs.gather(1, a)[None] + ur[:, a]  # (R, S, R') logit of fact (s, r) at a*(s, r')
            if ref is not None:
                star = star - ref.T[..., None]
            torch.sub(lse, torch.logsumexp(star, dim=-1).T, out=F[2])

    @torch.no_grad()
    def metrics(self, Wt, K, *, accuracy: bool = True, sets: dict | None = None, rate: bool = False) -> dict:
        """Loss, relation-only loss, subject-only loss, hallucination gap, p_true and accuracy (SPEC §3).

        Averages over facts with the training weights w(s, r); with ``sets`` (name -> :class:`EvalSet`)
        returns name -> the same dict under each set's weights instead, from one pass over the logits.
        ``p_true`` is the mean probability of the true answer, E exp(-loss_sr); accuracy counts a fact
        as correct when its true answer's logit is strictly the largest. ``rate``: also ``dloss_dt``, the
        training loss's rate along the exact flow (as :meth:`loss_rate`), from the same exponentials
        (a monitor row then costs about one right-hand side instead of three).

        The per-fact quantities are rows of one (5, S, R) array reduced by one matrix-vector product per set:
        a monitor row is dominated by the number of tensor operations at moderate sizes, not by arithmetic.
        """
        S, R, D = self.task.S, self.task.R, self.task.D
        ix = self._metric_indices()
        xs, ur = self._parts(Wt, K)
        Es, Er, Zp = self._normalise(xs, ur)  # from here on xs, ur are relative logits
        dloss_dt = None
        if rate:  # the gradient pass reads xs, ur, Es, Er, Zp and writes only G
            G = self._buffer("_G", (self.layout.C, self.layout.A))
            self._grad_from(xs, ur, Es, Er, Zp, G, need_loss=False)
            dloss_dt = self._rate_from_grad(Wt, K, G)
        lse, ref = self._log_normalisers(xs, ur, Zp)  # log Z_sr = ref_sr + lse_sr (ref None: 0)
        F = self._buffer("_facts6", (6, S, R))  # fact, relation, subject, p_true, correct, KL part (per set)
        target = self._target_logit(xs, ur)  # (S, R) relative target logits (also for the accuracy)
        fact = self._fact_losses(xs, ur, lse, ref, out=F[0], target=target if ref is None else target.clone())
        # (S, R, D)- and (S*R, R)-sized work arrays are reused: fresh 8 MB temporaries at S = 1024 cost more in
        # page faults than their arithmetic
        srd = self._buffer("_srd", (S, R, D))
        ur_own = ur.view(-1).take(ix["own"])  # (R, D) relation r's logits on its own block
        self._marginal_losses(xs, ur, Es, Er, lse, ref, ur_own, F, srd)
        torch.exp(fact.neg(), out=F[3])  # p_true per fact
        if accuracy:  # the order of the relative logits is the order of the logits
            self._correct(xs, ur, fact, out=F[4], target=target, work=srd)
        else:
            F[4].zero_()
        Fm = F[1:6].view(5, S * R)  # (5, S*R): relation, subject, p_true, correct, KL part
        lse_ref = lse if ref is None else lse + ref

        def reduce(es: EvalSet) -> dict:
            w = es.w.view(-1)
            # hallucination gap E KL(p(.|r) || p_hat(.|s, r)); p(.|r) lives on r's block and sums to 1 (or is
            # 0 where q(r) = 0, and then so is w), so KL = sum_a p log p - sum_a p (xi - ref) + lse, every term of
            # the size of the logit gaps
            lin = torch.sum(torch.mul(xs.view(S, R, D), es.P_own, out=srd), -1).add_((ur_own * es.P_own).sum(-1))
            # the loss by the very reduction of :meth:`loss` (bit for bit the loss the events see); the other rows
            # by one weighted cascade sum (a BLAS matrix-vector product would sum in sequence, less accurately)
            torch.sub(lse_ref, lin, out=F[5])  # (S, R) KL_sr - sum_a p log p
            vals = torch.cat((self._weighted(fact, es.w)[None], (Fm * w).sum(-1)))
            v = vals.tolist()
            out = dict(loss=v[0], relation_loss=v[1], subject_loss=v[2], hallucination_gap=v[-1] - es.H_A_given_R,
                       p_true=v[3])
            if accuracy:
                out["accuracy"] = v[4]
            return out

        if sets is None:
            out = reduce(self.train_set)
        else:
            out = {name: reduce(es) for name, es in sets.items()}
        if dloss_dt is not None:
            out["dloss_dt"] = float(dloss_dt)
        return out

    def accuracy(self, xs, ur) -> torch.Tensor:
        """Weighted fraction (training weights) of facts whose true answer has the strictly largest logit."""
        return (self.w * self._correct(xs, ur)).sum()

    def _correct(self, xs, ur, fact=None, *, out=None, target=None, work=None) -> torch.Tensor:
        """(S, R) 1.0 where the fact's true answer has the strictly largest logit, else 0.0 (into ``out`` if given).

        Exact, but avoids the S*R*|A| pass for most facts: the best wrong answer inside
        r's block is computed exactly (S*|A| work); outside the block its logit is at most
        (best xs outside the block) + (best ur outside the block). Facts this bound
        decides are settled; the rest are checked directly. ``fact``: the per-fact losses when at hand; where
        every fact's true answer has probability above 1/2 (loss below log 2, with a margin far above rounding)
        it is strictly the most likely one, and nothing else is computed. ``target``: the (S, R) relative target
        logits when at hand (read only); ``work``: an (S, R, D) work array.
        """
        if out is None:
            out = torch.empty(self.task.S, self.task.R, dtype=xs.dtype, device=xs.device)
        if fact is not None and bool((fact < _LOG2_SURE).all()):
            self.accuracy_direct_facts = 0
            return out.fill_(1.0)
        S, R, D = self.task.S, self.task.R, self.task.D
        ix = self._metric_indices()
        a = self.answers  # (S, R)
        target = self._target_logit(xs, ur) if target is None else target  # (S, R)
        blk = torch.add(xs.view(S, R, D), ur.view(-1).take(ix["own"]), out=work)  # (S, R, D) logits on r's own block
        blk.view(-1).index_fill_(0, ix["blk_ans"], -math.inf)
        inside = blk.amax(2)  # (S, R) best wrong answer inside the block
        if R > 1:
            bm = xs.view(S, R, D).amax(2)  # (S, R') best subject+shared logit per block
            top2 = bm.topk(2, dim=1)
            # best over blocks r' != r: the top block unless it is r itself, then the second
            xs_out = torch.where(top2.indices[:, :1] == ix["ar"][None],
                                 top2.values[:, 1:2], top2.values[:, :1])
            ur_bm = ur.view(R, R, D).amax(2).add_(ix["diag"])  # (R, R') best relation logit per block, -inf on r
            outside = xs_out + ur_bm.amax(1)[None]  # (S, R) upper bound of wrong answers outside the block
            sure = torch.gt(target, torch.maximum(inside, outside, out=outside), out=out)
        else:
            sure = torch.gt(target, inside, out=out)
        if R > 1:
            undecided = (target > inside).logical_and_(sure == 0)
            idx = undecided.nonzero()  # (n, 2)
        else:
            idx = torch.empty(0, 2, dtype=torch.long, device=xs.device)
        correct = out
        if R > 1 and idx.shape[0]:
            # a tighter bound for those: the best over blocks r' != r of (best xs in r') + (best ur[r] in r')
            s_i, r_i = idx[:, 0], idx[:, 1]
            ok = target[s_i, r_i] > (bm[s_i] + ur_bm[r_i]).amax(1)  # ur_bm is -inf on r's own block
            correct[s_i[ok], r_i[ok]] = 1.0
            idx = idx[~ok]
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
        return correct
