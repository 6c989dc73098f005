"""The one-layer transformer of SPEC §11 as a torch module of one model, for the trainers of frd-train
(dynamics.training): token batches (n, T) -> answer logits (n, |A|).

The logits are :func:`models.transformer.model.transformer_logits` (written once, for a model axis B) called
with a model axis of 1. The fixed embeddings and the initialization are those a TransformerConfig of the same
seed and sizes gets (:func:`sphere_embeddings`, :func:`draw_init`: the ``inputs``, ``outputs`` and ``init``
streams of the seed), sized from a :class:`models.task.Task` (its vocabulary and answers), so the task may be
any fact table of SPEC §1, not only the capacity work's ``random`` one.
"""
from __future__ import annotations

import torch
from torch import nn

from common.errors import check_int
from models.task import Task
from models.transformer.config import MAX_SEED, MAX_SIZE
from models.transformer.instance import draw_init, sphere_embeddings
from models.transformer.model import NAMES, transformer_logits


class TransformerModule(nn.Module):
    """One one-layer transformer (SPEC §11) on ``task``: embedding dimension d, H heads of dimension d_h, MLP
    width m (0: attention only).

    Buffers Phi (|V|, d), Psi (|A|, d): rows uniform on the unit sphere. Parameters (trained, autograd):
    WQ, WK, WV (H, d, d_h), WO (H·d_h, d) and, when m > 0, W1 (d, m), W2 (m, d), drawn with the authors'
    scales (:func:`models.transformer.instance.draw_init`) in float64, then cast to ``dtype``.
    """

    def __init__(self, task: Task, d: int = 16, H: int = 2, d_h: int = 8, m: int = 0, seed: int = 0,
                 dtype=torch.float32, device="cpu"):
        super().__init__()
        self.task = task
        for name, v, lo in (("d", d, 1), ("H", H, 1), ("d_h", d_h, 1), ("m", m, 0)):
            setattr(self, name, check_int(name, v, lo, MAX_SIZE))
        seed = check_int("seed", seed, 0, MAX_SEED)
        Phi, Psi = sphere_embeddings(seed, task.vocab_size, task.num_answers, d, dtype, device)
        self.register_buffer("Phi", Phi)  # (|V|, d)
        self.register_buffer("Psi", Psi)  # (|A|, d)
        for name, value in draw_init(seed, d, H, d_h, m).items():
            setattr(self, name, nn.Parameter(torch.as_tensor(value, dtype=dtype, device=device)))

    def weights(self) -> dict:
        """The parameters by name (WQ, WK, WV, WO[, W1, W2]), without a model axis."""
        return {n: getattr(self, n) for n in NAMES if hasattr(self, n)}

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (n, T) int64 -> logits (n, |A|): transformer_logits with a model axis of 1."""
        params = {n: p[None] for n, p in self.weights().items()}  # name -> (1, ...)
        return transformer_logits(params, self.Phi[None], self.Psi[None], tokens[None])[0]  # (n, |A|)
