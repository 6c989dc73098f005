"""The two models as torch modules: token batches (n, T) -> answer logits (n, |A|).

- :class:`LinearAttentionModel` (SPEC §2, model 1): parameters ``W`` (|A|, |V|) and ``K`` (|V|,)
  with the logits of :func:`models.linear.sequence_logits` (``xi(a) = sum_t W[a, z_t] K[z_t]``),
  initialized exactly as the flow (:func:`models.linear.init_linear` then :func:`models.linear.expand`).
- :class:`SoftmaxAttentionModel` (SPEC §4, model 2): one softmax head with the query at the
  last position, fixed random unit-sphere embeddings ``phi`` (|V|, d) and unembeddings ``psi``
  (|A|, d), trainable ``W_KQ`` and ``W_OV`` (d, d).

Both forwards work through the small vocabulary: they build per-token tables
(``U = W*K`` resp. ``phi W_KQ phi^T`` and ``phi W_OV^T psi^T``) and gather/scatter the
sequences against them, which is the same arithmetic as the direct definitions (tests
compare them with :func:`sequence_logits` and with a per-sequence loop).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from common.errors import check_int, check_positive

from models.linear import expand, init_linear
from models.task import Task


def token_counts(tokens: torch.Tensor, vocab_size: int, dtype=torch.float32) -> torch.Tensor:
    """Bag of tokens: (n, T) int64 -> (n, |V|) counts of each token in each sequence."""
    n = tokens.shape[0]
    c = torch.zeros(n, vocab_size, dtype=dtype, device=tokens.device)  # (n, |V|)
    return c.scatter_add_(1, tokens, torch.ones(tokens.shape, dtype=dtype, device=tokens.device))


class LinearAttentionModel(nn.Module):
    """Model 1. ``W`` (|A|, |V|), ``K`` (|V|,), same initializations as the flow.

    forward(tokens (n, T)) -> logits (n, |A|) = counts(tokens) @ (W*K)^T, which equals
    ``sequence_logits(W, K, tokens)`` (a sum over positions of ``W[a, z_t] K[z_t]``).
    """

    def __init__(self, task: Task, init: str = "balanced", scale: float = 1e-5, dtype=torch.float32,
                 device="cpu"):
        super().__init__()
        self.task = task
        Wt, Kc = init_linear(task, init, scale, dtype=torch.float64)
        W, K = expand(task, Wt.numpy(), Kc.numpy())  # (|A|, |V|), (|V|,)
        self.W = nn.Parameter(torch.as_tensor(W, dtype=dtype, device=device))
        self.K = nn.Parameter(torch.as_tensor(K, dtype=dtype, device=device))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        U = self.W * self.K  # (|A|, |V|) products u[a, z]
        counts = token_counts(tokens, U.shape[1], U.dtype)  # (n, |V|)
        return counts @ U.T  # (n, |A|)

    def loss_and_grad_(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the batch; writes its gradient into ``W.grad`` and ``K.grad`` by hand.

        The same numbers as autograd through :meth:`forward` (tested), with three small GEMMs and no
        autograd graph: logits = C U^T, G = (softmax - onehot)/n, dU = G^T C, dW = dU*K, dK = sum_a dU*W.
        tokens (n, T) int64, targets (n,) int64 -> loss (0-d tensor, on the device).
        """
        W, K = self.W.detach(), self.K.detach()
        n = tokens.shape[0]
        U = W * K  # (|A|, |V|)
        counts = token_counts(tokens, U.shape[1], U.dtype)  # (n, |V|)
        logits = counts @ U.T  # (n, |A|)
        logp = torch.log_softmax(logits, dim=1)  # (n, |A|)
        loss = -logp.gather(1, targets[:, None]).mean()
        G = logp.exp_()  # (n, |A|) softmax
        G.scatter_add_(1, targets[:, None], torch.full((n, 1), -1.0, dtype=G.dtype, device=G.device))
        dU = (G.T @ counts).div_(n)  # (|A|, |V|) d loss / d u
        self.W.grad = dU * K  # (|A|, |V|)
        self.K.grad = (dU * W).sum(0)  # (|V|,)
        return loss

    def compressed(self):
        """(Wt (C, |A|), K (C,)) float64 numpy with the noise columns averaged (exact when they are equal)."""
        t = self.task
        W = self.W.detach().double().cpu().numpy()
        K = self.K.detach().double().cpu().numpy()
        S, R, N = t.S, t.R, t.N
        cols = np.concatenate([W[:, :S + R], W[:, S + R:S + R + N].mean(1, keepdims=True), W[:, -1:]], 1)
        Kc = np.concatenate([K[:S + R], [K[S + R:S + R + N].mean()], K[-1:]])
        return np.ascontiguousarray(cols.T), Kc


def unit_sphere(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """(n, d) float64 rows drawn i.i.d. uniform on the unit sphere of R^d."""
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True)


class SoftmaxAttentionModel(nn.Module):
    """Model 2 of SPEC §4.

    attn_t = softmax_t(phi(z_t)^T W_KQ phi(z_T)),  xi(a) = psi(a)^T W_OV sum_t attn_t phi(z_t).
    phi (|V|, d), psi (|A|, d): fixed buffers, rows uniform on the unit sphere (seeded).
    W_KQ, W_OV (d, d): trainable, entries i.i.d. N(0, init_scale^2 / d) (so a unit vector is mapped
    to a vector of norm about init_scale).
    """

    def __init__(self, task: Task, d: int = 64, init_scale: float = 1e-3, seed: int = 0, dtype=torch.float32,
                 device="cpu"):
        super().__init__()
        self.task = task
        self.d = check_int("d", d, 1)
        init_scale = check_positive("init_scale", init_scale, allow_zero=True)
        g = torch.Generator().manual_seed(int(seed))
        self.register_buffer("phi", unit_sphere(task.vocab_size, d, g).to(dtype=dtype, device=device))  # (|V|, d)
        self.register_buffer("psi", unit_sphere(task.num_answers, d, g).to(dtype=dtype, device=device))  # (|A|, d)
        std = init_scale / math.sqrt(d)
        self.W_KQ = nn.Parameter((torch.randn(d, d, generator=g, dtype=torch.float64) * std).to(dtype=dtype,
                                                                                                 device=device))
        self.W_OV = nn.Parameter((torch.randn(d, d, generator=g, dtype=torch.float64) * std).to(dtype=dtype,
                                                                                                 device=device))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n, T = tokens.shape
        V = self.phi.shape[0]
        Mkq = self.phi @ (self.W_KQ @ self.phi.T)  # (|V|, |V|) Mkq[z, z'] = phi(z)^T W_KQ phi(z')
        Pov = (self.phi @ self.W_OV.T) @ self.psi.T  # (|V|, |A|) Pov[z, a] = psi(a)^T W_OV phi(z)
        q = tokens[:, -1:]  # (n, 1) query token z_T
        scores = Mkq[tokens, q.expand(n, T)]  # (n, T) phi(z_t)^T W_KQ phi(z_T)
        attn = torch.softmax(scores, dim=1)  # (n, T)
        weights = torch.zeros(n, V, dtype=attn.dtype, device=tokens.device).scatter_add_(1, tokens, attn)  # (n, |V|)
        return weights @ Pov  # (n, |A|)

    def loss_and_grad_(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the batch; writes its gradient into ``W_KQ.grad`` and ``W_OV.grad`` by hand.

        The same numbers as autograd through :meth:`forward` (tested), with matmuls, gathers and scatters
        only (no sort-based index backward, no autograd graph), so a CUDA graph of the step is short.
        tokens (n, T) int64, targets (n,) int64 -> loss (0-d tensor, on the device).
        Math (E = phi, P = psi): Mkq = E W_KQ E^T, Pov = E W_OV^T P^T; rowsQ[i] = Mkq[:, q_i];
        scores = rowsQ.gather(tokens); attn = softmax(scores); weights = scatter_add(attn); logits = weights Pov.
        G = (softmax(logits) - onehot)/n; dPov = weights^T G; dattn = (G Pov^T).gather(tokens);
        dscores = attn (dattn - <attn, dattn>); dMkq^T = onehot(q)^T scatter_add(dscores);
        dW_KQ = E^T dMkq E; dW_OV = P^T dPov^T E.
        """
        n, T = tokens.shape
        E, P = self.phi, self.psi  # (|V|, d), (|A|, d)
        V = E.shape[0]
        Wkq, Wov = self.W_KQ.detach(), self.W_OV.detach()  # (d, d)
        Mkq = E @ (Wkq @ E.T)  # (|V|, |V|)
        Pov = (E @ Wov.T) @ P.T  # (|V|, |A|)
        Q1 = torch.zeros(n, V, dtype=E.dtype, device=E.device).scatter_(1, tokens[:, -1:], 1.0)  # (n, |V|)
        rowsQ = Q1 @ Mkq.T  # (n, |V|) rowsQ[i, z] = Mkq[z, q_i]
        scores = rowsQ.gather(1, tokens)  # (n, T)
        attn = torch.softmax(scores, dim=1)  # (n, T)
        weights = torch.zeros(n, V, dtype=E.dtype, device=E.device).scatter_add_(1, tokens, attn)  # (n, |V|)
        logits = weights @ Pov  # (n, |A|)
        logp = torch.log_softmax(logits, dim=1)  # (n, |A|)
        loss = -logp.gather(1, targets[:, None]).mean()
        G = logp.exp_()  # (n, |A|)
        G.scatter_add_(1, targets[:, None], torch.full((n, 1), -1.0, dtype=G.dtype, device=G.device))
        G.div_(n)  # (n, |A|) dL/dlogits
        dPov = weights.T @ G  # (|V|, |A|)
        dattn = (G @ Pov.T).gather(1, tokens)  # (n, T)
        dscores = attn * (dattn - (attn * dattn).sum(1, keepdim=True))  # (n, T)
        drows = torch.zeros(n, V, dtype=E.dtype, device=E.device).scatter_add_(1, tokens, dscores)  # (n, |V|)
        dMkq = drows.T @ Q1  # (|V|, |V|) dMkq[z, z'] = sum_i drows[i, z] [q_i = z']
        self.W_KQ.grad = E.T @ dMkq @ E  # (d, d)
        self.W_OV.grad = (P.T @ dPov.T) @ E  # (d, d)
        return loss

