"""Adam on fresh batches of sequences for one-layer transformers (SPEC §11), many of one shape at once.

``train_transformers`` trains B transformers (seeds × learning rates) as one batched computation: parameters
carry a leading model axis, the loss minimised is Σ_b L_b (model b's gradient is ∇L_b), each model draws its
own batches from its own sampler (seeded by its seed's ``data`` stream) and stops on its own once its accuracy
on its evaluation set (every fact once, SPEC §11) reaches the target. One model is a batch of one: the
reference the batched run is tested against. The optimizer is capacity_training's BatchedAdam.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from common.errors import check_int
from dynamics.capacity_training.adam import BatchedAdam
from dynamics.capacity_training.config import MAX_STEPS, AdamSettings, check_batch
from dynamics.threads import threads_for, torch_threads
from models.memory import correct_count, loss, needed_count
from models.sampler import TaskSampler
from models.transformer import embeddings, eval_sequences, stack_transformer_params, task_of, transformer_logits
from models.transformer.instance import eval_copies, stream_int

MAX_BATCH = 2**20


@dataclass(frozen=True)
class TransformerTrainConfig(AdamSettings):
    """Adam on the cross-entropy of fresh batches (SPEC §11). Validated at construction.

    batch: sequences per step (the paper 1024). max_steps: at most this many Adam steps (the paper 2**14).
    eval_every: the accuracy on the evaluation set is computed at steps 0, e, 2e, … and at max_steps (the
    authors: max_steps/128); the run stops once it reaches ``target``. eval_size: the evaluation set holds every
    fact ceil(eval_size/(S·R)) times, each copy in its own noise context (SPEC §11; the authors test on 1024
    sampled sequences; 1: every fact once), so that one unlucky noise draw cannot fail a small task.
    The other fields are :class:`dynamics.capacity_training.config.AdamSettings`'.
    """

    batch: int = 256
    max_steps: int = 2**14
    eval_every: int = 16
    eval_size: int = 1024

    def __post_init__(self):
        object.__setattr__(self, "batch", check_int("batch", self.batch, 1, MAX_BATCH))
        object.__setattr__(self, "max_steps", check_int("max_steps", self.max_steps, 0, MAX_STEPS))
        object.__setattr__(self, "eval_every", check_int("eval_every", self.eval_every, 1, MAX_STEPS))
        object.__setattr__(self, "eval_size", check_int("eval_size", self.eval_size, 1, MAX_BATCH))
        super().__post_init__()


@dataclass(frozen=True)
class TransformerRun:
    """Outcome of training B transformers; arrays numpy.

    success (B,) bool; steps (B,) Adam updates received when the target was reached (else max_steps);
    best_accuracy (B,) the highest evaluation accuracy seen. eval_steps (E,): the steps evaluated; loss (E, B)
    (training-batch loss of that step's forward; at the last step, of a fresh batch) and accuracy (E, B), a
    finished model's values kept constant; None when not recorded. params: final parameters, name -> (B, ...).
    """

    success: np.ndarray
    steps: np.ndarray
    best_accuracy: np.ndarray
    eval_steps: np.ndarray | None
    loss: np.ndarray | None
    accuracy: np.ndarray | None
    params: dict
    seconds: float


def train_transformers(configs, lrs, train: TransformerTrainConfig = TransformerTrainConfig()) -> TransformerRun:
    """Train the transformers ``configs`` (one shape) with learning rates ``lrs`` (one per model) together."""
    configs = list(configs)
    lrs = check_batch(configs, list(lrs), noun="transformer", plural="transformers", per="model")
    c = configs[0]
    entries = len(configs) * train.batch * max(c.T * c.H * c.d_h, c.num_answers, c.m, c.d)
    with torch_threads(threads_for(entries // 20, train.device)):
        return _train(configs, lrs, train)


def _train(configs, lrs, train: TransformerTrainConfig) -> TransformerRun:
    start = time.perf_counter()
    dtype, dev = getattr(torch, train.dtype), torch.device(train.device)
    B, n = len(configs), train.batch
    tasks = [task_of(c) for c in configs]
    Phi, Psi = (torch.stack(t) for t in zip(*(embeddings(c, dtype, dev) for c in configs)))  # (B, V, d), (B, |A|, d)
    copies = eval_copies(configs[0].facts, train.eval_size)
    ev = [eval_sequences(t, c.seed, dev, copies) for t, c in zip(tasks, configs)]
    ev_tok, ev_tgt = torch.stack([e[0] for e in ev]), torch.stack([e[1] for e in ev])         # (B, E, T), (B, E)
    samplers = [TaskSampler(t, dev, seed=stream_int(c.seed, "data", c.restart)) for t, c in zip(tasks, configs)]
    params = stack_transformer_params(configs, dtype, dev)                                    # name -> (B, ...)
    for p in params.values():
        p.requires_grad_(True)
    opt = BatchedAdam(params, torch.tensor(lrs, dtype=dtype, device=dev), train.beta1, train.beta2, train.eps)
    n_eval = copies * configs[0].facts                                                        # E
    need = needed_count(n_eval, train.target)
    active = torch.ones(B, dtype=torch.bool, device=dev)
    success = torch.zeros(B, dtype=torch.bool, device=dev)
    steps = torch.full((B,), train.max_steps, dtype=torch.int64, device=dev)
    best = torch.zeros(B, dtype=torch.int64, device=dev)
    rec_steps, rec_loss, rec_acc = [], [], []
    last_loss = torch.zeros(B, dtype=dtype, device=dev)
    K = train.max_steps
    for k in range(K + 1):
        batches = [s.sample(n) for s in samplers]
        tokens = torch.stack([b.tokens for b in batches])                 # (B, n, T)
        targets = torch.stack([b.targets for b in batches])               # (B, n)
        L = loss(transformer_logits(params, Phi, Psi, tokens), targets)   # (B,)
        if k % train.eval_every == 0 or k == K:
            with torch.no_grad():
                count = correct_count(transformer_logits(params, Phi, Psi, ev_tok), ev_tgt)  # (B,)
            best = torch.maximum(best, count)
            done = active & (count >= need)                               # (B,) reached the target now
            success |= done
            steps = torch.where(done, torch.full_like(steps, k), steps)
            last_loss = torch.where(active, L.detach(), last_loss)
            if train.record:  # models evaluated now (still active, done included) get fresh values
                acc = count.to(dtype) / n_eval                            # (B,)
                rec_steps.append(k)
                rec_loss.append(last_loss.clone())
                rec_acc.append(acc if not rec_acc else torch.where(active, acc, rec_acc[-1]))
            active &= ~done
        if k == K or not bool(active.any()):
            break
        grads = torch.autograd.grad(L.sum(), list(params.values()))       # ∂(Σ_b L_b)/∂θ_b = ∂L_b/∂θ_b
        opt.step(params, dict(zip(params, grads)), active)
    rec = train.record
    return TransformerRun(success=success.cpu().numpy(), steps=steps.cpu().numpy(),
                          best_accuracy=best.cpu().numpy() / n_eval,
                          eval_steps=np.array(rec_steps) if rec else None,
                          loss=torch.stack(rec_loss).cpu().numpy() if rec else None,
                          accuracy=torch.stack(rec_acc).cpu().numpy() if rec else None,
                          params={k: p.detach().cpu().numpy() for k, p in params.items()},
                          seconds=time.perf_counter() - start)


def train_transformer(config, lr, train: TransformerTrainConfig = TransformerTrainConfig()) -> TransformerRun:
    """Train one transformer (a batch of one)."""
    return train_transformers([config], [lr], train)
