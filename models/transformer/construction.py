"""Transformers built without training (SPEC §8, paper §4): heads as denoisers that attend to their own subset
of subject and relation tokens, and the value/output maps (attention only, m = 0) or the MLP (m > 0) as the
associative memory that stores the facts. Built for one instance (a TransformerConfig: its task, embeddings
and, for the MLP's first layer, its initialization) and evaluated on the instance's evaluation set with the
model's own logits (models.transformer.model), so that a construction and a trained model are scored alike.

Every solve is a minimum-norm least-squares call (exact while the constraints are fewer than the unknowns and
linearly independent; past that a projection, and accuracy falls: the construction's capacity).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from models.memory.metrics import correct_count
from models.transformer.config import TransformerConfig
from models.transformer.instance import draw_init, embeddings, eval_copies, eval_sequences, task_of
from models.transformer.model import attention_weights, transformer_logits

LAMBDA = 30.0   # attention score of a head's own tokens; EOS gets LAMBDA/2, every other token about 0
BETA = 4.0      # attention only: weight of the relation's answer block against the subject's answers


def head_groups(S: int, R: int, H: int) -> list[np.ndarray]:
    """The tokens each head attends to (subjects 0..S-1, relations S..S+R-1): with H >= 2 heads, subjects and
    relations get separate heads (about H·S/(S+R) subject heads, at least one of each) and are split evenly
    among them, so every sequence has exactly one token in each of two heads; with H = 1 the head holds all."""
    if H == 1:
        return [np.arange(S + R)]
    H_s = min(H - 1, max(1, round(H * S / (S + R))))
    return ([g for g in np.array_split(np.arange(S), H_s)] + [S + g for g in np.array_split(np.arange(R), H - H_s)])


PIN = 1e4      # row weight of the constraints a construction must meet (against 1 for those it only prefers)


def _lstsq(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Minimum-norm least-squares X of A X ≈ B (SVD-based, rank revealing)."""
    return np.linalg.lstsq(A, B, rcond=None)[0]


def _pinned(A: np.ndarray, B: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """X with A X = B (met to about 1/PIN while they are fewer than the unknowns) and rest·X as small as
    possible in the least-squares sense: weighted least squares, rows of A weighted PIN, rows of rest 1."""
    zeros = np.zeros((len(rest),) + B.shape[1:])
    return _lstsq(np.vstack([PIN * A, rest]), np.concatenate([PIN * B, zeros]))


def construct(config: TransformerConfig, lam: float = LAMBDA, beta: float = BETA) -> dict:
    """Parameters (float64 numpy, no model axis; the layout of models.transformer.model) of the construction for
    ``config``'s instance and shape (d, H, d_h, m).

    Each "pinned" solve below meets its constraints and makes the other rows as small as it can (least
    squares; all exact while the rows are at most d).
    Attention (both kinds): head h's query is φ(EOS) and its key map is rank one, chosen so that its score
    w_h·φ(z) is ``lam`` for its own tokens Z_h and ``lam``/2 for EOS (pinned), about 0 for every other token:
    a head whose token is in the sequence attends to it; one whose tokens are absent attends to EOS (a sink
    whose value is 0), not to the noise. Values: W_V^h W_O^h (d×d, rank <= d_h) maps φ(z) to a target t(z)
    for z in Z_h and φ(EOS) to 0 (pinned), the other tokens to about 0, truncated to rank d_h. With H = 1
    both tokens share the head and each gets half the attention, so the targets are doubled.
    Attention only: t(s) = f(s) with ψ(a*(s, r))·f(s) = 1 for every relation r (the subject's R answers,
    superposed; pinned) and ψ(a)·f(s) about 0 for the other answers; t(r) = beta·g(r), ψ(a)·g(r) = 1 for the
    D answers of relation r (the relation selects its answer block; pinned), about 0 for the others. The
    residual is f(s) + beta·g(r): the right answer scores 1 + beta.
    With MLP: t(z) = φ(z) (the heads copy the subject and the relation), W_1 the instance's initialization
    (random ReLU features of h), W_2 the least-squares readout with h + W_2ᵀ relu(W_1ᵀ h) = ψ(a*(s, r)) at
    the noise-free h of every fact.
    """
    task = task_of(config)
    S, R, D, d, H, dh, m = config.S, config.R, config.D, config.d, config.H, config.d_h, config.m
    Phi, Psi = (x.numpy() for x in embeddings(config, torch.float64))       # (V, d), (|A|, d)
    answers = np.asarray(task.answers)                                      # (S, R) global answer ids
    eos = Phi[task.eos]                                                     # (d,)
    if m == 0:
        def others(keep):  # the answers not in ``keep``
            return Psi[np.setdiff1d(np.arange(R * D), keep)]
        targets = np.concatenate([
            np.stack([_pinned(Psi[answers[s]], np.ones(R), others(answers[s])) for s in range(S)]),  # f(s) (S, d)
            beta * np.stack([_pinned(Psi[r * D:(r + 1) * D], np.ones(D), others(np.arange(r * D, (r + 1) * D)))
                             for r in range(R)]),                                                    # beta·g(r) (R, d)
        ])
    else:
        targets = Phi[:S + R].copy()                                        # copy: t(z) = φ(z)
    if H == 1:
        targets = 2 * targets                                               # s and r share the head's attention
    WQ, WK, WV = (np.zeros((H, d, dh)) for _ in range(3))
    WO = np.zeros((H * dh, d))
    V = len(Phi)
    for h, Z in enumerate(head_groups(S, R, H)):
        rows = np.vstack([Phi[Z], eos])                                     # (k+1, d) own tokens, then EOS
        rest = Phi[np.setdiff1d(np.arange(V), np.r_[Z, task.eos])]          # every other token
        w = _pinned(rows, np.r_[np.full(len(Z), lam), lam / 2], rest)      # (d,) score w·φ(z)
        WQ[h, :, 0] = eos / (eos @ eos)                                     # q = W_Qᵀ φ(EOS) = e_1
        WK[h, :, 0] = math.sqrt(dh) * w                                     # k(z) = √d_h (w·φ(z)) e_1
        M = _pinned(rows, np.vstack([targets[Z], np.zeros(d)]), rest)       # (d, d) φ(z)ᵀ M = t(z)ᵀ, EOS -> 0
        U, sv, Vt = np.linalg.svd(M)
        rank = min(dh, d)
        WV[h, :, :rank] = U[:, :rank]                                       # (d, rank)
        WO[h * dh:h * dh + rank] = sv[:rank, None] * Vt[:rank]              # (rank, d)
    params = dict(WQ=WQ, WK=WK, WV=WV, WO=WO)
    if m > 0:
        W1 = draw_init(config.seed, d, H, dh, m)["W1"]                      # (d, m) random features
        h_clean = targets[:S][:, None, :] + targets[S:][None, :, :]         # (S, R, d) h when attention is exact
        if H == 1:
            h_clean = h_clean / 2
        h_clean = h_clean.reshape(S * R, d)                                 # fact (s, r) at row s·R + r
        features = np.maximum(h_clean @ W1, 0.0)                            # (S·R, m)
        W2 = _lstsq(features, Psi[answers.reshape(-1)] - h_clean)           # (m, d)
        params.update(W1=W1, W2=W2)
    return params


def _evaluated(config: TransformerConfig, eval_size: int, lam: float, beta: float):
    """The construction's parameters (torch float64, model axis 1), the embeddings Phi (1, V, d) and Psi
    (1, |A|, d), and the instance's evaluation set: tokens (E, T), targets (E,) (SPEC §11)."""
    params = {k: torch.as_tensor(v)[None] for k, v in construct(config, lam, beta).items()}
    Phi, Psi = (x[None] for x in embeddings(config, torch.float64))
    tokens, targets = eval_sequences(task_of(config), config.seed, copies=eval_copies(config.facts, eval_size))
    return params, Phi, Psi, tokens, targets


def construction_accuracy(config: TransformerConfig, eval_size: int = 1024, lam: float = LAMBDA,
                          beta: float = BETA) -> float:
    """Accuracy of the construction on the instance's evaluation set (SPEC §11: every fact
    ceil(eval_size/(S·R)) times, each in its own noise context; a tie counts as wrong), in float64."""
    params, Phi, Psi, tokens, targets = _evaluated(config, eval_size, lam, beta)
    xi = transformer_logits(params, Phi, Psi, tokens[None])                # (1, E, |A|)
    return float(correct_count(xi, targets[None])[0]) / len(targets)


def own_token_attention(config: TransformerConfig, eval_size: int = 1024) -> float:
    """The smallest attention weight, over the evaluation set, that the head holding a sequence's subject
    (and the one holding its relation) puts on that token: near 1 when the heads denoise (H >= 2)."""
    params, Phi, _, tokens, _ = _evaluated(config, eval_size, LAMBDA, BETA)
    a = attention_weights(params, Phi, tokens[None])[0]                       # (E, H, T)
    owner = np.empty(config.S + config.R, dtype=np.int64)
    for h, Z in enumerate(head_groups(config.S, config.R, config.H)):
        owner[Z] = h
    worst = 1.0
    for kind in (tokens < config.S, (tokens >= config.S) & (tokens < config.S + config.R)):
        e, t = kind.nonzero(as_tuple=True)                                    # one position per sequence
        heads = torch.as_tensor(owner)[tokens[e, t]]
        worst = min(worst, float(a[e, heads, t].min()))
    return worst
