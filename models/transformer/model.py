"""The one-layer transformer of SPEC §11, written for a leading model axis B (B models of one shape at once).

Parameters are a dict of tensors with the model axis first: WQ, WK, WV (B, H, d, d_h), WO (B, H·d_h, d) and,
when m > 0, W1 (B, d, m), W2 (B, m, d). Embeddings Phi (B, V, d) and Psi (B, |A|, d) are fixed per model.
Tokens are (B, n, T): model b reads its own n sequences.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from models.transformer.instance import init_params

NAMES = ("WQ", "WK", "WV", "WO", "W1", "W2")


def stack_transformer_params(configs, dtype=torch.float32, device="cpu") -> dict:
    """Initial parameters of transformers of one shape stacked on a leading model axis B."""
    per_model = [init_params(c) for c in configs]
    return {n: torch.as_tensor(np.stack([p[n] for p in per_model]), dtype=dtype, device=device)
            for n in NAMES if n in per_model[0]}


def _gather(table: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """table (B, V, ...) indexed per model by tokens (B, n, T) -> (B, n, T, ...)."""
    b = torch.arange(table.shape[0], device=tokens.device).view(-1, 1, 1)  # (B, 1, 1)
    return table[b, tokens]


def attention_weights(params: dict, Phi: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Softmax attention of the last (EOS) position over all T positions, per head: (B, n, H, T).

    score^h_t = (W_Q^hᵀ φ(z_T)) · (W_K^hᵀ φ(z_t)) / √d_h.
    """
    d_h = params["WQ"].shape[-1]
    K_tab = torch.einsum("bvd,bhdk->bvhk", Phi, params["WK"])          # (B, V, H, d_h) key of every token
    K = _gather(K_tab, tokens)                                          # (B, n, T, H, d_h)
    x_last = _gather(Phi, tokens[:, :, -1:])[:, :, 0]                   # (B, n, d) φ(z_T)
    q = torch.einsum("bnd,bhdk->bnhk", x_last, params["WQ"])            # (B, n, H, d_h)
    scores = torch.einsum("bnhk,bnthk->bnht", q, K) / math.sqrt(d_h)    # (B, n, H, T)
    return torch.softmax(scores, dim=-1)


def residual_stream(params: dict, Phi: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """x at the last position: h = W_Oᵀ [o^1; …; o^H], x = h + W_2ᵀ relu(W_1ᵀ h) (x = h without MLP): (B, n, d)."""
    B, n = tokens.shape[:2]
    a = attention_weights(params, Phi, tokens)                          # (B, n, H, T)
    V_tab = torch.einsum("bvd,bhdk->bvhk", Phi, params["WV"])          # (B, V, H, d_h)
    o = torch.einsum("bnht,bnthk->bnhk", a, _gather(V_tab, tokens))    # (B, n, H, d_h)
    h = torch.bmm(o.reshape(B, n, -1), params["WO"])                    # (B, n, H·d_h) @ (B, H·d_h, d) -> (B, n, d)
    if "W1" not in params:
        return h
    z = torch.relu(torch.bmm(h, params["W1"]))                          # (B, n, m)
    return h + torch.bmm(z, params["W2"])                               # (B, n, d)


def transformer_logits(params: dict, Phi: torch.Tensor, Psi: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """ξ(a) = ψ(a)ᵀ x over the answers: (B, n, |A|)."""
    return torch.bmm(residual_stream(params, Phi, tokens), Psi.transpose(1, 2))  # (B, n, |A|)
