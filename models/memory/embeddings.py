"""Fixed random embeddings on the unit sphere and the target map (SPEC §7), nested in N and M.

The streams come from numpy's ``SeedSequence(seed)`` spawned into three independent children (inputs,
outputs, initialization); numpy's Generator fills arrays row by row, so the first N rows of an instance do
not depend on how many rows are drawn (tested): the instance of size N is a prefix of every larger one.
"""
from __future__ import annotations

import numpy as np
import torch

from models.memory.config import MemoryConfig

STREAMS = ("inputs", "outputs", "init")


def generators(seed: int) -> dict:
    """Independent numpy Generators for the input embeddings, output embeddings and initialization."""
    children = np.random.SeedSequence(seed).spawn(len(STREAMS))
    return {name: np.random.default_rng(c) for name, c in zip(STREAMS, children)}


def sphere(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """(n, d) float64 rows i.i.d. uniform on the unit sphere of R^d (normalised standard Gaussians)."""
    g = rng.standard_normal((n, d))  # (n, d)
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def target_map(target: str, N: int, M: int) -> np.ndarray:
    """f* as an (N,) int64 array: x (identity) or floor(x·M/N) (fixed)."""
    x = np.arange(N, dtype=np.int64)
    return x if target == "identity" else (x * M) // N


def instance(config: MemoryConfig, dtype=torch.float32, device="cpu"):
    """(E, U, f*) of one instance: E (N, d) input embeddings, U (M, d) output embeddings, f* (N,) int64."""
    g = generators(config.seed)
    E = torch.as_tensor(sphere(g["inputs"], config.N, config.d), dtype=dtype, device=device)   # (N, d)
    U = torch.as_tensor(sphere(g["outputs"], config.M, config.d), dtype=dtype, device=device)  # (M, d)
    f = torch.as_tensor(target_map(config.target, config.N, config.M), device=device)           # (N,)
    return E, U, f


def stack_instances(configs, dtype=torch.float32, device="cpu"):
    """(E, U, f) of memories of one shape stacked on a leading model axis: (B, N, d), (B, M, d), (B, N)."""
    parts = [instance(c, dtype, device) for c in configs]
    return tuple(torch.stack(t) for t in zip(*parts))
