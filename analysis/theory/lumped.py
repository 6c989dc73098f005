"""The exact flow reduced by the symmetries that survive non-uniform data: identical subjects and
exchangeable relations.

Two subjects are *copies* when they have the same weights ``w(s, .)`` and the same answers relative to each
block (``a*(s, r) - r D``); two relations are *exchangeable* when ``w(., r) = w(., r')`` and their columns agree
relative to their blocks. Permuting copies, or exchangeable relations together with their answer blocks,
maps the task onto itself, so the flow started from a symmetric (balanced or uniform) state stays on the
subspace those permutations fix. With subject classes ``c`` (``m_c`` copies) and relation classes ``k``
(``n_k`` relations) that subspace has the coordinates (``j`` indexes the D answers of a block)::

    X[c, k, j]   subject c's W on every block of class k          (stands for m_c n_k entries)
    Ks[c]        subject c's K                                     (m_c)
    Yo[k, j]     relation k's W on its own block                   (n_k)
    Y[k, k', j]  relation k's W on each block of class k' (k' = k: the other blocks of its own class)
                                                                   (n_k n_k', or n_k (n_k - 1))
    Kr[k]        relation k's K                                    (n_k)
    Zn[k, j], Kn one noise token's W on each block of class k, K   (N n_k, N)
    Ze[k, j], Ke EOS's W and K                                     (n_k, 1)

Fact (s in c, r in k) has, with ``b[k'] = (T - 3) Zn[k'] Kn + Ze[k'] Ke``, the logits
``X[c, k] Ks[c] + Yo[k] Kr[k] + b[k]`` on its own block and ``X[c, k'] Ks[c] + Y[k, k'] Kr[k] + b[k']`` on each of
the ``n_k' - [k' = k]`` other blocks of class k'. The reduced loss ``L_red`` (the same cross-entropy, each
class of facts weighted by its total weight) equals the full loss on the subspace, and the flow there is
``d theta / dt = -(1 / m_theta) dL_red / d theta``: a coordinate that stands for m equal entries receives the sum
of their m equal gradients. ``tests/analysis/theory/test_lumped.py`` checks the expanded right-hand side against the
full flow's (models.population) at random symmetric states.

Cost per evaluation: ``C_s C_r^2 D`` logits instead of ``S R^2 D``: Zipf subjects with uniform relations
(one relation class) cost ``S D``, R^2 times less than the full flow; uniform subjects on a structured table
collapse to D subject classes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from models.linear import init_entries


@dataclass(frozen=True)
class Classes:
    """Subject classes (``subject_class`` (S,) -> c, sizes ``m`` (C_s,)) and relation classes
    (``relation_class`` (R,) -> k, sizes ``n`` (C_r,)); ``jstar`` (C_s, C_r): the answer index in the block;
    ``wfact`` (C_s, C_r): the weight of ONE fact of class (c, k)."""

    subject_class: np.ndarray
    relation_class: np.ndarray
    m: np.ndarray
    n: np.ndarray
    jstar: np.ndarray
    wfact: np.ndarray

    @property
    def sizes(self) -> tuple:
        return len(self.m), len(self.n)


def _groups(keys: list) -> tuple:
    index, first = {}, []
    labels = np.empty(len(keys), dtype=np.int64)
    for i, key in enumerate(keys):
        if key not in index:
            index[key] = len(first)
            first.append(i)
        labels[i] = index[key]
    return labels, np.array(first)


def find_classes(task, weights=None) -> Classes:
    """The copy classes of subjects and the exchangeable classes of relations (exact equality of weights)."""
    w = task.fact_weights if weights is None else np.asarray(weights, dtype=np.float64)
    S, R, D = task.S, task.R, task.D
    rel = task.answers - (np.arange(R) * D)[None, :]  # (S, R) answer index within the block
    rk, rfirst = _groups([(w[:, r].tobytes(), rel[:, r].tobytes()) for r in range(R)])
    sk, sfirst = _groups([(w[s].tobytes(), rel[s].tobytes()) for s in range(S)])
    m = np.bincount(sk).astype(np.float64)
    n = np.bincount(rk).astype(np.float64)
    jstar = rel[np.ix_(sfirst, rfirst)]
    wfact = w[np.ix_(sfirst, rfirst)]
    return Classes(sk, rk, m, n, jstar, wfact)


class LumpedFlow:
    """The reduced flow on a flat float64 tensor; ``rhs(y, out)``, ``loss(y)``, ``metrics(y)``, ``expand(y)``."""

    def __init__(self, task, weights=None, classes: Classes | None = None):
        self.task = task
        self.cl = find_classes(task, weights) if classes is None else classes
        Cs, Cr = self.cl.sizes
        D = task.D
        self.D, self.Cs, self.Cr = D, Cs, Cr
        self.shapes = dict(X=(Cs, Cr, D), Ks=(Cs,), Yo=(Cr, D), Y=(Cr, Cr, D), Kr=(Cr,), Zn=(Cr, D), Kn=(1,),
                           Ze=(Cr, D), Ke=(1,))
        self.offsets, off = {}, 0
        for k, sh in self.shapes.items():
            size = int(np.prod(sh))
            self.offsets[k] = (off, off + size)
            off += size
        self.size = off
        m, n = torch.as_tensor(self.cl.m), torch.as_tensor(self.cl.n)
        N = task.N
        same = torch.eye(Cr, dtype=torch.float64)
        mult = dict(X=(m[:, None, None] * n[None, :, None]).expand(Cs, Cr, D), Ks=m, Yo=n[:, None].expand(Cr, D),
                    Y=(n[:, None, None] * (n[None, :, None] - same[:, :, None])).expand(Cr, Cr, D),
                    Kr=n, Zn=(N * n)[:, None].expand(Cr, D), Kn=torch.tensor([float(N)]),
                    Ze=n[:, None].expand(Cr, D), Ke=torch.tensor([1.0]))
        # coordinates that stand for no entry (Y[k, k] of a class of one relation) stay at their start: speed 0
        flat = torch.cat([mult[k].reshape(-1) for k in self.shapes])
        self.speed = torch.where(flat > 0, 1.0 / torch.clamp(flat, min=1.0), torch.zeros(()))
        self.mult = flat
        # fact classes: weight of one fact, multiplicity, and the block multiplicities seen by a fact of class k
        self.P = torch.as_tensor(self.cl.wfact * self.cl.m[:, None] * self.cl.n[None, :])  # (Cs, Cr) total weight
        self.other = (n[None, :] - same)  # (Cr k, Cr k') other blocks of class k' seen by a fact of class k
        self.jstar = torch.as_tensor(self.cl.jstar)
        self.T3 = float(task.T - 3)

    def unpack(self, y: torch.Tensor) -> dict:
        return {k: y[a:b].view(self.shapes[k]) for k, (a, b) in self.offsets.items()}

    def initial(self, alpha: float) -> torch.Tensor:
        """Balanced start: K = alpha, W = alpha / sqrt|A| (SPEC §2)."""
        w, k0 = init_entries("balanced", alpha, self.task.num_answers)
        y = torch.full((self.size,), w, dtype=torch.float64)
        v = self.unpack(y)
        for k in ("Ks", "Kr", "Kn", "Ke"):
            v[k].fill_(k0)
        return y

    def _logits(self, v: dict) -> tuple:
        """(own (Cs, Cr, D), cross (Cs, Cr, Cr, D)) logits of a fact of class (c, k) on its own block and on
        the blocks of class k' (one representative block each)."""
        b = self.T3 * v["Zn"] * v["Kn"] + v["Ze"] * v["Ke"]  # (Cr, D) shared part on blocks of each class
        xs = v["X"] * v["Ks"][:, None, None]  # (Cs, Cr, D)
        own = xs + (v["Yo"] * v["Kr"][:, None])[None] + b[None]  # (Cs, Cr, D)
        cross = xs[:, None] + (v["Y"] * v["Kr"][:, None, None])[None] + b[None, None]  # (Cs, Cr k, Cr k', D)
        return own, cross

    def _parts(self, y: torch.Tensor) -> tuple:
        own, cross = self._logits(self.unpack(y))
        return self._parts_from(own, cross)

    def _parts_from(self, own, cross) -> tuple:
        """(lse, lse over the own block, target logit), each (Cs, Cr)."""
        logm = torch.log(torch.clamp(self.other, min=1e-300))[None, :, :, None]  # log multiplicity
        crossm = torch.where(self.other[None, :, :, None] > 0, cross + logm, torch.full_like(cross, -math.inf))
        lse_own = torch.logsumexp(own, dim=-1)  # (Cs, Cr)
        lse_cross = torch.logsumexp(crossm.flatten(2), dim=-1)  # (Cs, Cr)
        lse = torch.logaddexp(lse_own, lse_cross)
        target = torch.gather(own, 2, self.jstar[..., None]).squeeze(-1)  # (Cs, Cr)
        return lse, lse_own, target

    def loss(self, y: torch.Tensor) -> torch.Tensor:
        lse, _, target = self._parts(y)
        return (self.P * (lse - target)).sum()

    def metrics(self, y: torch.Tensor) -> dict:
        """loss and relation-only loss (mass on the own block) of the state."""
        with torch.no_grad():
            lse, lse_own, target = self._parts(y)
            return dict(loss=float((self.P * (lse - target)).sum()), relation_loss=float((self.P * (lse - lse_own)).sum()))

    def grad(self, y: torch.Tensor) -> torch.Tensor:
        """dL_red / dy in closed form (the chain rule through the logits; ``grad_autograd`` is the reference)."""
        v = self.unpack(y)
        own, cross = self._logits(v)
        lse, _, _ = self._parts_from(own, cross)
        Go = torch.exp(own - lse[..., None])  # (Cs, Cr, D) probabilities on the own block
        Go.scatter_add_(2, self.jstar[..., None], torch.full_like(lse[..., None], -1.0))
        Go = Go * self.P[..., None]
        Gc = torch.exp(cross - lse[..., None, None]) * self.other[None, :, :, None]  # mass on the k' blocks
        Gc = Gc * self.P[..., None, None]  # (Cs, Cr k, Cr k', D)
        Gxs = Go + Gc.sum(dim=1)  # (Cs, Cr, D): d L / d (X Ks)
        Gyo = Go.sum(dim=0)  # (Cr, D)
        Gy = Gc.sum(dim=0)  # (Cr, Cr, D)
        Gb = Gxs.sum(dim=0)  # (Cr, D)
        g = torch.empty_like(y)
        d = self.unpack(g)
        d["X"].copy_(Gxs * v["Ks"][:, None, None])
        d["Ks"].copy_((Gxs * v["X"]).sum(dim=(1, 2)))
        d["Yo"].copy_(Gyo * v["Kr"][:, None])
        d["Y"].copy_(Gy * v["Kr"][:, None, None])
        d["Kr"].copy_((Gyo * v["Yo"]).sum(-1) + (Gy * v["Y"]).sum(dim=(1, 2)))
        d["Zn"].copy_(self.T3 * Gb * v["Kn"])
        d["Kn"].copy_(self.T3 * (Gb * v["Zn"]).sum().reshape(1))
        d["Ze"].copy_(Gb * v["Ke"])
        d["Ke"].copy_((Gb * v["Ze"]).sum().reshape(1))
        return g

    def grad_autograd(self, y: torch.Tensor) -> torch.Tensor:
        """dL_red / dy by autograd (the reference for :meth:`grad`)."""
        with torch.enable_grad():
            yy = y.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.loss(yy), yy)
        return g

    def rhs(self, y: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """d y / d t = -(1 / multiplicity) dL_red / dy."""
        res = self.grad(y).mul_(self.speed).neg_()
        if out is None:
            return res
        out.copy_(res)
        return out

    def expand(self, y: torch.Tensor) -> tuple:
        """The compressed full state (Wt (S+R+2, |A|), K (S+R+2,)) of models.linear for a reduced state."""
        v = self.unpack(y)
        task, D = self.task, self.D
        S, R = task.S, task.R
        sc, rc = self.cl.subject_class, self.cl.relation_class
        Wt = torch.zeros(S + R + 2, R * D, dtype=torch.float64)
        K = torch.zeros(S + R + 2, dtype=torch.float64)
        blocks = torch.as_tensor(rc)
        Wt[:S] = v["X"][torch.as_tensor(sc)][:, blocks, :].reshape(S, R * D)
        K[:S] = v["Ks"][torch.as_tensor(sc)]
        for r in range(R):
            k = int(rc[r])
            row = v["Y"][k][blocks].clone()  # (R, D): blocks of each relation's class
            row[r] = v["Yo"][k]
            Wt[S + r] = row.reshape(-1)
            K[S + r] = v["Kr"][k]
        Wt[S + R] = v["Zn"][blocks].reshape(-1)
        K[S + R] = v["Kn"][0]
        Wt[S + R + 1] = v["Ze"][blocks].reshape(-1)
        K[S + R + 1] = v["Ke"][0]
        return Wt, K

    def restrict(self, Wt: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
        """The reduced coordinates of a symmetric compressed state (reads one representative of each class)."""
        task, D = self.task, self.D
        S, R = task.S, task.R
        sfirst = [int(np.flatnonzero(self.cl.subject_class == c)[0]) for c in range(self.Cs)]
        rmembers = [np.flatnonzero(self.cl.relation_class == k) for k in range(self.Cr)]
        y = torch.zeros(self.size, dtype=torch.float64)
        v = self.unpack(y)
        Wb = Wt.view(-1, R, D)
        for c, s in enumerate(sfirst):
            for k, mem in enumerate(rmembers):
                v["X"][c, k] = Wb[s, mem[0]]
            v["Ks"][c] = K[s]
        for k, mem in enumerate(rmembers):
            r = int(mem[0])
            v["Yo"][k] = Wb[S + r, r]
            v["Kr"][k] = K[S + r]
            for k2, mem2 in enumerate(rmembers):
                others = [int(x) for x in mem2 if int(x) != r]
                if others:
                    v["Y"][k, k2] = Wb[S + r, others[0]]
            v["Zn"][k] = Wb[S + R, r]
            v["Ze"][k] = Wb[S + R + 1, r]
        v["Kn"][0] = K[S + R]
        v["Ke"][0] = K[S + R + 1]
        return y


def run_lumped(task, weights=None, alpha: float = 1e-5, *, levels=(), t_max: float = 1e7, rtol: float = 1e-10,
               atol: float | None = None, loss_target: float | None = None, metric_levels: dict | None = None):
    """Integrate the reduced flow (DOPRI5 of dynamics, float64) from the balanced start.

    levels: first times the loss falls to each; metric_levels: {name: levels} for other metrics (relation_loss).
    Stops at ``loss_target`` (default: the lowest level / 2, or 1e-2). Returns (solution, flow): the engine's
    Solution (``.events``, ``sol(t)`` dense output, ``.stats``) and the :class:`LumpedFlow`.
    """
    from dynamics.ode.dopri5 import Dopri5Stepper
    from dynamics.ode.engine import Event, integrate
    from dynamics.threads import torch_threads

    flow = LumpedFlow(task, weights)
    y0 = flow.initial(alpha)
    atol = alpha * alpha * 1e-6 if atol is None else atol
    lv = tuple(float(x) for x in levels)
    target = loss_target if loss_target is not None else (0.5 * min(lv) if lv else 1e-2)

    def lossf(t, y):
        return flow.metrics(y)["loss"]

    events = [Event("loss", lossf, lv)] if lv else []
    for name, vals in (metric_levels or {}).items():
        events.append(Event(name, (lambda t, y, _n=name: flow.metrics(y)[_n]), tuple(vals)))
    with torch_threads(1), torch.inference_mode():  # small tensors: threads only add overhead
        stepper = Dopri5Stepper(flow.rhs, 0.0, y0, rtol, atol)
        sol = integrate(stepper, t_max, events=events, stop=Event("target", lossf, (target,)))
    return sol, flow


MIN_FULL_LOGITS = 1 << 18  # below this many logits (S R |A|) the full flow's GEMMs beat the reduced flow's overhead


def worth_reducing(task, weights=None, factor: float = 4.0) -> bool:
    """True when the full flow is large (>= MIN_FULL_LOGITS logits per evaluation) and the reduced flow
    evaluates at least ``factor`` times fewer."""
    if task.S * task.R * task.num_answers < MIN_FULL_LOGITS:
        return False
    cs, cr = find_classes(task, weights).sizes
    return cs * cr * cr * factor <= task.S * task.R * task.R


# ----------------------------------------------------------------------------- symbolic form (sympy)
def symbolic_reduced_loss(cl: Classes, D: int, T: int):
    """The reduced loss L_red as a sympy expression of the reduced coordinates, for the classes ``cl``.

    Returns (L_red, coords): coords maps each name of :class:`LumpedFlow`'s layout to a sympy Array-like
    nested list of symbols of the same shape. The same formula as :meth:`LumpedFlow.loss`, written
    symbolically so that tests can prove, by simplification to 0, that -(1/m) dL_red/dtheta is the full
    flow restricted to the symmetric subspace.
    """
    import sympy as sp

    Cs, Cr = len(cl.m), len(cl.n)

    def arr(name, *shape):
        if not shape:
            return sp.Symbol(name)
        if len(shape) == 1:
            return [sp.Symbol(f"{name}_{i}") for i in range(shape[0])]
        return [arr(f"{name}_{i}", *shape[1:]) for i in range(shape[0])]

    X, Ks, Yo, Y, Kr = arr("X", Cs, Cr, D), arr("Ks", Cs), arr("Yo", Cr, D), arr("Y", Cr, Cr, D), arr("Kr", Cr)
    Zn, Kn, Ze, Ke = arr("Zn", Cr, D), sp.Symbol("Kn"), arr("Ze", Cr, D), sp.Symbol("Ke")
    b = [[(T - 3) * Zn[k][j] * Kn + Ze[k][j] * Ke for j in range(D)] for k in range(Cr)]
    L = 0
    for c in range(Cs):
        for k in range(Cr):
            P = sp.nsimplify(cl.wfact[c, k]) * int(cl.m[c]) * int(cl.n[k])
            if P == 0:
                continue
            own = [X[c][k][j] * Ks[c] + Yo[k][j] * Kr[k] + b[k][j] for j in range(D)]
            Z = sum(sp.exp(x) for x in own)
            for k2 in range(Cr):
                mult = int(cl.n[k2]) - (1 if k2 == k else 0)
                Z += mult * sum(sp.exp(X[c][k2][j] * Ks[c] + Y[k][k2][j] * Kr[k] + b[k2][j]) for j in range(D))
            L += P * (sp.log(Z) - own[int(cl.jstar[c, k])])
    coords = dict(X=X, Ks=Ks, Yo=Yo, Y=Y, Kr=Kr, Zn=Zn, Kn=[Kn], Ze=Ze, Ke=[Ke])
    return L, coords
