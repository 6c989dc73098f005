"""Full-batch Adam training of associative memories (SPEC §7), many memories of one shape at once.

``train_batch`` trains B memories (seeds × learning rates) as one batched computation: parameters carry a
leading model axis, the loss minimised is the sum of the models' losses (whose gradient with respect to model
b is ∇L_b: the models share nothing), and each model stops on its own once its accuracy reaches the target.
One memory is ``train_batch([config], [lr], ...)``: the same code with B = 1 (the reference the batched run
is tested against).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dynamics.capacity_training.adam import BatchedAdam
from dynamics.capacity_training.config import MemoryTrainConfig, check_batch
from dynamics.threads import threads_for, torch_threads
from models.memory import MODELS, loss_and_grad, needed_count, stack_params
from models.memory.embeddings import stack_instances


@dataclass(frozen=True)
class BatchRun:
    """Outcome of training B memories. Arrays are numpy, model axis last for curves.

    success (B,) bool: accuracy reached the target at some step. steps (B,) int: the step at which it did
    (the number of Adam updates the model received), or max_steps. best_accuracy (B,): the highest accuracy
    seen. loss, accuracy (K+1, B): per step k = 0..K (K = the last step any model ran; a finished model's
    values stay constant), None when not recorded. params: final parameters, name -> (B, ...). seconds: wall.
    """

    success: np.ndarray
    steps: np.ndarray
    best_accuracy: np.ndarray
    loss: np.ndarray | None
    accuracy: np.ndarray | None
    params: dict
    seconds: float


CACHE_BYTES = 2**19  # logits per chunk of models: about a core's L2 cache


def train_batch(configs, lrs, train: MemoryTrainConfig = MemoryTrainConfig()) -> BatchRun:
    """Train the memories ``configs`` (one shape) with learning rates ``lrs`` (one per memory) together."""
    lrs = check_batch(list(configs), list(lrs), noun="memory", plural="memories", per="memory",
                      grouping="; group them by (model, N, M, d, m, target)")
    c = configs[0]
    entries = len(configs) * c.N * max(c.M, c.d, c.m)  # the largest intermediate, (B, N, max(M, d, m))
    # below 2^22 entries one thread: a step is ~10 small kernels, and on a shared CPU spin-waiting threads
    # cost more than they give (measured on 2 busy cores: 32 MLPs d=8 m=16 N=128 ran 0.6x to 5.6x the
    # single runs' rate with 2 threads, depending on the load, against a steady rate with 1)
    with torch_threads(threads_for(entries // 20, train.device)):
        return _train(configs, lrs, train)


def _train(configs, lrs, train: MemoryTrainConfig) -> BatchRun:
    import time

    start = time.perf_counter()
    dtype, dev = getattr(torch, train.dtype), torch.device(train.device)
    cls = MODELS[configs[0].model]
    B, N = len(configs), configs[0].N
    E, U, f = stack_instances(configs, dtype, dev)                 # (B, N, d), (B, M, d), (B, N)
    Ut = U.transpose(1, 2).contiguous()                             # (B, d, M): MKL's faster layout here
    params = stack_params(configs, dtype, dev)                      # name -> (B, ...)
    opt = BatchedAdam(params, torch.tensor(lrs, dtype=dtype, device=dev), train.beta1, train.beta2, train.eps)
    need = needed_count(N, train.target)
    active = torch.ones(B, dtype=torch.bool, device=dev)           # (B,) still training
    success = torch.zeros(B, dtype=torch.bool, device=dev)
    steps = torch.full((B,), train.max_steps, dtype=torch.int64, device=dev)
    best = torch.zeros(B, dtype=torch.int64, device=dev)           # best correct count
    K = train.max_steps
    curves = (torch.empty(K + 1, B, dtype=dtype, device=dev), torch.empty(K + 1, B, dtype=dtype, device=dev)) \
        if train.record else None
    k = 0
    chunk = max(1, CACHE_BYTES // (N * configs[0].M * E.element_size()))  # models per pass over the logits
    L = torch.empty(B, dtype=dtype, device=dev)                    # (B,) loss
    count = torch.empty(B, dtype=torch.int64, device=dev)          # (B,) correct inputs
    dFt = torch.empty(B, E.shape[2], N, dtype=dtype, device=dev)   # (B, d, N) (∂L_b/∂F_b)ᵀ
    for k in range(K + 1):
        F, saved = cls.forward(params, E)                           # (B, N, d)
        for i in range(0, B, chunk):
            # the logits of a few models at a time, so that they stay in cache through the passes over them
            # (measured: 1.5-2x faster than all 32 MLPs' 2 MB of logits at once, d=8, N=128, one busy core)
            s = slice(i, i + chunk)
            if chunk >= B:  # one chunk: no slicing (a step of a single small model is mostly per-call overhead)
                L, count, G = loss_and_grad(torch.bmm(F, Ut), f)
            else:
                L[s], count[s], G = loss_and_grad(torch.bmm(F[s], Ut[s]), f[s])  # G (chunk, N, M) N·∂L/∂ξ
            # the gradient written out (models.memory: tested against autograd): (∂L_b/∂F_b)ᵀ = U_bᵀ G_bᵀ / N
            torch.bmm(Ut[s], G.transpose(1, 2), out=dFt[s])
        if curves is not None:
            curves[0][k] = L
            curves[1][k] = count.to(dtype) / N
        best = torch.maximum(best, count)
        done = active & (count >= need)                             # (B,) reached the target now
        success |= done
        steps = torch.where(done, torch.full_like(steps, k), steps)
        active &= ~done
        if k == K or not bool(active.any()):
            break
        opt.step(params, cls.backward(params, E, saved, dFt / N), active)
    return BatchRun(success=success.cpu().numpy(), steps=steps.cpu().numpy(),
                    best_accuracy=best.cpu().numpy() / N,
                    loss=None if curves is None else curves[0][:k + 1].cpu().numpy(),
                    accuracy=None if curves is None else curves[1][:k + 1].cpu().numpy(),
                    params={n: p.detach().cpu().numpy() for n, p in params.items()},
                    seconds=time.perf_counter() - start)


def train_one(config, lr, train: MemoryTrainConfig = MemoryTrainConfig()) -> BatchRun:
    """Train one memory (a batch of one)."""
    return train_batch([config], [lr], train)
