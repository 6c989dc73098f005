"""Oracles ok(N, seeds) -> [bool per seed] for the capacity search (SPEC §9), and the memory they need."""
from __future__ import annotations

from dynamics.capacity_training import MemoryTrainConfig, train_batch
from models.memory import MemoryConfig, needed_count
from models.memory.constructions import construction_accuracy


def memory_config(model: str, N: int, d: int, m: int, target: str, M: int | None, seed: int) -> MemoryConfig:
    """The instance of one probe (M only for fixed targets)."""
    return MemoryConfig(model=model, N=N, d=d, m=m if model == "mlp" else 0, target=target,
                        M=M if target == "fixed" else None, seed=seed)


def training_oracle(model: str, d: int, m: int, target: str, M, lrs, train: MemoryTrainConfig):
    """ok(N, seeds): for each seed, some learning rate in ``lrs`` trains the memory to the target accuracy.
    All seeds × learning rates of one probe are trained as one batch."""
    from dataclasses import replace

    train = replace(train, record=False)
    lrs = list(lrs)

    def ok(N, seeds):
        configs = [memory_config(model, N, d, m, target, M, s) for s in seeds for _ in lrs]
        run = train_batch(configs, lrs * len(seeds), train)
        return list(run.success.reshape(len(seeds), len(lrs)).any(axis=1))

    return ok


def construction_oracle(model: str, d: int, m: int, target: str, M, threshold: float = 0.99):
    """ok(N, seeds): the construction of SPEC §8 for this shape (correlation memory for linear, random
    features + least squares for MLP) reaches ``threshold`` accuracy."""

    def ok(N, seeds):
        out = []
        for s in seeds:
            c = memory_config(model, N, d, m, target, M, s)
            correct = round(construction_accuracy(c) * N)
            out.append(correct >= needed_count(N, threshold))
        return out

    return ok


def training_bytes(model: str, N: int, d: int, m: int, M: int, batch: int, itemsize: int = 4) -> int:
    """Estimated peak bytes of one batched training step: about 6 live (B, N, max(M, m, d)) arrays (logits,
    their softmax gradient, hidden activations and gradients) plus parameters and Adam moments (4 copies)."""
    from models.memory import parameter_count

    width = max(M, m, d)
    return int(itemsize * batch * (6 * N * width + 2 * N * d + 4 * parameter_count(model, d, m)))


def construction_bytes(model: str, N: int, d: int, m: int, M: int) -> int:
    """Estimated peak bytes of one construction (float64): logits (N, M), features (N, m), SVD workspace."""
    return int(8 * (3 * N * max(M, m, d) + 4 * N * d + 4 * d * d + (N * m if model == "mlp" else 0)))
