"""The configuration of one one-layer transformer on the fact task (SPEC §11): task sizes, model shape, seed."""
from __future__ import annotations

from dataclasses import dataclass

from common.errors import ConfigError, check_int

MAX_SEED = 2**63 - 1
MAX_SIZE = 2**31 - 1


@dataclass(frozen=True)
class TransformerConfig:
    """One transformer instance. Validated at construction (ConfigError naming the bad value).

    S, R, D: subjects, relations, answers per relation (the fact table is the ``random`` kind of SPEC §1: each
    a*(s, r) uniform over relation r's D answers, drawn from the seed). T: sequence length (>= 3).
    N: noise tokens (``None``: S + R, the paper's choice). d: embedding dimension; H heads of dimension d_h;
    m: MLP width (0: attention only). seed: embeddings, fact table, initialization, training batches and the
    evaluation sequences (independent streams, SPEC §11). restart: another initialization and batch order of
    the same instance (restart 0 is the seed's own; k > 0 draws the init and data streams from (seed, k)).
    """

    S: int = 8
    R: int = 8
    D: int = 4
    d: int = 16
    H: int = 2
    d_h: int = 8
    m: int = 0
    T: int = 8
    N: int | None = None
    seed: int = 0
    restart: int = 0

    def __post_init__(self):
        for name in ("S", "R", "D", "d", "H", "d_h"):
            object.__setattr__(self, name, check_int(name, getattr(self, name), 1, MAX_SIZE))
        object.__setattr__(self, "m", check_int("m", self.m, 0, MAX_SIZE))
        object.__setattr__(self, "T", check_int("T", self.T, 3, MAX_SIZE))
        object.__setattr__(self, "N", self.S + self.R if self.N is None else check_int("N", self.N, 1, MAX_SIZE))
        object.__setattr__(self, "seed", check_int("seed", self.seed, 0, MAX_SEED))
        object.__setattr__(self, "restart", check_int("restart", self.restart, 0, MAX_SEED))
        if self.H * self.d_h > MAX_SIZE:
            raise ConfigError(f"H·d_h = {self.H * self.d_h} is too large; it must be at most {MAX_SIZE}")

    @property
    def facts(self) -> int:
        """Number of facts S·R."""
        return self.S * self.R

    @property
    def vocab_size(self) -> int:
        """Input tokens: S + R + N + 1 (subjects, relations, noise, EOS)."""
        return self.S + self.R + self.N + 1

    @property
    def num_answers(self) -> int:
        return self.R * self.D

    @property
    def params(self) -> int:
        """Trained parameters: 4·H·d_h·d + 2·m·d."""
        return transformer_parameter_count(self.d, self.H, self.d_h, self.m)

    def shape(self) -> tuple:
        """What must agree for transformers to be trained as one batch: (S, R, D, N, T, d, H, d_h, m)."""
        return (self.S, self.R, self.D, self.N, self.T, self.d, self.H, self.d_h, self.m)


def transformer_parameter_count(d: int, H: int, d_h: int, m: int) -> int:
    """W_Q, W_K, W_V (H, d, d_h) and W_O (H·d_h, d): 4·H·d_h·d; MLP W_1 (d, m), W_2 (m, d): 2·m·d."""
    return 4 * H * d_h * d + 2 * m * d
