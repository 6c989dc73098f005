"""The configuration of one associative-memory instance (SPEC §7): sizes, target map, model, seed."""
from __future__ import annotations

from dataclasses import dataclass

from common.errors import ConfigError, check_choice, check_int

MEMORY_KINDS = ("linear", "mlp")
TARGET_KINDS = ("identity", "fixed")
MAX_SEED = 2**63 - 1
MAX_SIZE = 2**31 - 1


@dataclass(frozen=True)
class MemoryConfig:
    """One memory instance. Validated at construction (ConfigError naming the bad value).

    model: ``linear`` (F(e) = W e) or ``mlp`` (F(e) = Vᵀ relu(W e + b), width ``m``).
    N: number of input tokens; d: embedding dimension; m: MLP width (0 for linear).
    target: ``identity`` (M = N, f*(x) = x) or ``fixed`` (f*(x) = floor(x·M/N), needs 1 <= M <= N).
    M: number of output tokens (``None``: N for ``identity``; required for ``fixed``).
    seed: seeds the embeddings and the initialization (independent streams, SPEC §7).
    """

    model: str = "linear"
    N: int = 16
    d: int = 8
    m: int = 0
    target: str = "identity"
    M: int | None = None
    seed: int = 0

    def __post_init__(self):
        check_choice("model", self.model, MEMORY_KINDS)
        check_choice("target", self.target, TARGET_KINDS)
        object.__setattr__(self, "N", check_int("N", self.N, 1, MAX_SIZE))
        object.__setattr__(self, "d", check_int("d", self.d, 1, MAX_SIZE))
        object.__setattr__(self, "seed", check_int("seed", self.seed, 0, MAX_SEED))
        if self.model == "mlp":
            object.__setattr__(self, "m", check_int("m", self.m, 1, MAX_SIZE))
        elif self.m != 0:
            raise ConfigError(f"m = {self.m!r} is set for the linear memory; m must be 0 (it has no hidden layer)")
        if self.target == "identity":
            if self.M is not None and self.M != self.N:
                raise ConfigError(f"M = {self.M!r} differs from N = {self.N} with target identity; "
                                  f"leave M unset or use target fixed")
            object.__setattr__(self, "M", self.N)
        else:
            if self.M is None:
                raise ConfigError("M is unset with target fixed; give M, an integer in [1, N]")
            object.__setattr__(self, "M", check_int("M", self.M, 1, self.N))

    @property
    def params(self) -> int:
        """Number of trained parameters: d² (linear) or 2md + m (MLP)."""
        return parameter_count(self.model, self.d, self.m)

    def shape(self) -> tuple:
        """What must agree for memories to be trained as one batch: (model, N, M, d, m, target)."""
        return (self.model, self.N, self.M, self.d, self.m, self.target)


def parameter_count(model: str, d: int, m: int = 0) -> int:
    """Trained parameters of a memory: d² (linear) or 2md + m (MLP: W, V and the bias b)."""
    return d * d if model == "linear" else 2 * m * d + m
