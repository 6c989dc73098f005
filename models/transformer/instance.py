"""A transformer instance's fixed parts (SPEC §11): fact task, embeddings on the sphere, evaluation sequences,
and its standard initialization, each from its own stream of the instance's seed.

Streams: ``numpy.random.SeedSequence(seed).spawn(6)`` in the order of STREAMS; the fact table, the training
batches and the evaluation sequences get integer seeds drawn from theirs (TaskConfig and torch.Generator take
integers).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from models.memory.embeddings import sphere
from models.task import Task, TaskConfig, make_task
from models.transformer.config import TransformerConfig

STREAMS = ("inputs", "outputs", "init", "facts", "data", "eval")


RESTARTED = ("init", "data")  # the streams a restart (SPEC §11) draws anew


def streams(seed: int, restart: int = 0) -> dict:
    """Independent SeedSequences of one instance, by name; a restart k > 0 replaces the init and data streams
    by those spawned from the entropy (seed, k), keeping embeddings, facts and evaluation set."""
    own = dict(zip(STREAMS, np.random.SeedSequence(seed).spawn(len(STREAMS))))
    if restart:
        own.update(zip(RESTARTED, np.random.SeedSequence([seed, restart]).spawn(len(RESTARTED))))
    return own


def stream_int(seed: int, name: str, restart: int = 0) -> int:
    """A non-negative 63-bit integer seed drawn from stream ``name`` of ``seed`` (and ``restart``)."""
    return int(streams(seed, restart)[name].generate_state(1, np.uint64)[0] >> np.uint64(1))


def task_of(config: TransformerConfig) -> Task:
    """The fact task of SPEC §1: sizes of ``config``, ``random`` fact table, uniform frequencies."""
    return make_task(TaskConfig(S=config.S, R=config.R, D=config.D, T=config.T, N=config.N, facts="random",
                                seed=stream_int(config.seed, "facts")))


def embeddings(config: TransformerConfig, dtype=torch.float32, device="cpu"):
    """Phi (V, d) input-token embeddings and Psi (|A|, d) answer unembeddings, rows uniform on the sphere."""
    return sphere_embeddings(config.seed, config.vocab_size, config.num_answers, config.d, dtype, device)


def sphere_embeddings(seed: int, vocab_size: int, num_answers: int, d: int, dtype=torch.float32, device="cpu"):
    """Phi (vocab_size, d) and Psi (num_answers, d), rows uniform on the sphere, from the ``inputs`` and
    ``outputs`` streams of ``seed`` (what :func:`embeddings` draws for a config of these sizes)."""
    s = streams(seed)
    Phi = sphere(np.random.default_rng(s["inputs"]), vocab_size, d)     # (V, d)
    Psi = sphere(np.random.default_rng(s["outputs"]), num_answers, d)   # (|A|, d)
    return torch.as_tensor(Phi, dtype=dtype, device=device), torch.as_tensor(Psi, dtype=dtype, device=device)


def init_params(config: TransformerConfig) -> dict:
    """Initial parameters of one model (float64 numpy, no model axis): :func:`draw_init` of the config's shape
    from its init stream (of its restart)."""
    return draw_init(config.seed, config.d, config.H, config.d_h, config.m, config.restart)


def draw_init(seed: int, d: int, H: int, d_h: int, m: int, restart: int = 0) -> dict:
    """Initial parameters of a transformer of shape (d, H, d_h, m) from the ``init`` stream of (seed, restart)
    (float64 numpy, no model axis), Gaussian with the authors' scales: W_Q, W_K, W_V (H, d, d_h) std 1/√d_h;
    W_O (H·d_h, d) std 1/√d; W_1 (d, m) std 1/√d; W_2 (m, d) std 1/√m (W_1, W_2 only when m > 0)."""
    rng = np.random.default_rng(streams(seed, restart)["init"])
    dh = d_h
    p = {n: rng.standard_normal((H, d, dh)) / np.sqrt(dh) for n in ("WQ", "WK", "WV")}
    p["WO"] = rng.standard_normal((H * dh, d)) / np.sqrt(d)
    if m > 0:
        p["W1"] = rng.standard_normal((d, m)) / np.sqrt(d)
        p["W2"] = rng.standard_normal((m, d)) / np.sqrt(m)
    return p


def eval_copies(facts: int, eval_size: int) -> int:
    """How many times the evaluation set holds each fact: ceil(eval_size / facts), at least 1 (SPEC §11)."""
    return max(1, math.ceil(eval_size / facts))


def eval_sequences(task: Task, seed: int, device="cpu", copies: int = 1):
    """The evaluation set: every fact ``copies`` times, in order c·S·R + s·R + r (copy c of fact (s, r)), each
    sequence with its own positions and noise drawn once.

    Returns tokens (copies·S·R, T) int64 and targets (copies·S·R,) int64. Same layout as TaskSampler.sample:
    noise everywhere, EOS last, s and r at two distinct uniform positions among the first T-1.
    """
    S, R, T, N = task.S, task.R, task.T, task.N
    g = torch.Generator().manual_seed(stream_int(seed, "eval"))
    n = copies * S * R
    s = torch.arange(S).repeat_interleave(R).repeat(copies)                  # (n,)
    r = torch.arange(R).repeat(S * copies)                                   # (n,)
    tokens = torch.randint(S + R, S + R + N, (n, T), generator=g)            # (n, T)
    tokens[:, T - 1] = task.eos
    i = torch.randint(0, T - 1, (n,), generator=g)                           # (n,)
    j = torch.randint(0, T - 2, (n,), generator=g)
    j = j + (j >= i).long()                                                  # (n,) != i
    tokens.scatter_(1, i[:, None], s[:, None])
    tokens.scatter_(1, j[:, None], (r + S)[:, None])
    targets = torch.tensor(task.answers)[s, r]                               # (n,)
    return tokens.to(device), targets.to(device)
