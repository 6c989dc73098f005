"""Settings of full-batch Adam training of memories (SPEC §7)."""
from __future__ import annotations

from dataclasses import dataclass

from common.errors import ConfigError, check_choice, check_int, check_positive
from models.memory import ACCURACY_TARGET

DTYPES = ("float32", "float64")
MAX_STEPS = 2**24


@dataclass(frozen=True)
class MemoryTrainConfig:
    """Full-batch Adam on the cross-entropy of SPEC §7. Validated at construction.

    max_steps: at most this many Adam steps (the paper: 2**15); the run stops early once the accuracy reaches
    ``target`` (0.99). betas, eps: Adam's (no weight decay). dtype: float32 by default (the models are trained
    by Adam, not integrated, and only the argmax matters); float64 for tight comparisons in tests.
    record: keep the loss and accuracy of every step (off: only the outcome, for capacity searches).
    """

    max_steps: int = 2**15
    target: float = ACCURACY_TARGET
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    dtype: str = "float32"
    device: str = "cpu"
    record: bool = True

    def __post_init__(self):
        object.__setattr__(self, "max_steps", check_int("max_steps", self.max_steps, 0, MAX_STEPS))
        check_positive("target", self.target, maximum=1.0, why="an accuracy")
        for name in ("beta1", "beta2"):
            x = check_positive(name, getattr(self, name), allow_zero=True, maximum=1.0)
            if x == 1.0:
                raise ConfigError(f"{name} = 1 is not allowed; {name} must be in [0, 1)")
        check_positive("eps", self.eps)
        check_choice("dtype", self.dtype, DTYPES)


def check_lr(lr) -> float:
    """A learning rate: finite and > 0 (ConfigError otherwise)."""
    return check_positive("lr", lr)
