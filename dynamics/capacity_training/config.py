"""Settings of full-batch Adam training of memories (SPEC §7)."""
from __future__ import annotations

from dataclasses import dataclass

from common.errors import ConfigError, check_choice, check_int, check_positive
from models.memory import ACCURACY_TARGET

DTYPES = ("float32", "float64")
MAX_STEPS = 2**24


@dataclass(frozen=True)
class AdamSettings:
    """The settings every capacity trainer shares (SPEC §7, §11), validated at construction by
    :func:`check_adam_settings`. target: the accuracy that stops a run early (0.99). beta1, beta2, eps: Adam's
    (no weight decay). dtype, device: float32 on the CPU by default (the models are trained by Adam, not
    integrated, and only the argmax matters); float64 for tight comparisons in tests. record: keep the loss and
    accuracy of every step or evaluation (off: only the outcome, for capacity searches)."""

    target: float = ACCURACY_TARGET
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    dtype: str = "float32"
    device: str = "cpu"
    record: bool = True

    def __post_init__(self):
        check_adam_settings(self)


@dataclass(frozen=True)
class MemoryTrainConfig(AdamSettings):
    """Full-batch Adam on the cross-entropy of SPEC §7. Validated at construction.

    max_steps: at most this many Adam steps (the paper: 2**15); the run stops early once the accuracy reaches
    ``target``. The other fields are :class:`AdamSettings`'.
    """

    max_steps: int = 2**15

    def __post_init__(self):
        object.__setattr__(self, "max_steps", check_int("max_steps", self.max_steps, 0, MAX_STEPS))
        super().__post_init__()


def check_adam_settings(config) -> None:
    """The settings every capacity trainer shares: target (an accuracy in (0, 1]), beta1 and beta2 in [0, 1),
    eps > 0 and a known dtype (ConfigError otherwise)."""
    check_positive("target", config.target, maximum=1.0, why="an accuracy")
    for name in ("beta1", "beta2"):
        if check_positive(name, getattr(config, name), allow_zero=True, maximum=1.0) == 1.0:
            raise ConfigError(f"{name} = 1 is not allowed; {name} must be in [0, 1)")
    check_positive("eps", config.eps)
    check_choice("dtype", config.dtype, DTYPES)


def check_batch(configs, lrs, *, noun: str, plural: str, per: str, grouping: str = "") -> list[float]:
    """Configs to train as one batch: at least one, all of one shape (``c.shape()``), one learning rate each.
    ``noun``/``plural`` name them in messages, ``per`` what each learning rate belongs to, ``grouping`` a hint
    appended to the shape message. Returns the checked learning rates."""
    if not configs:
        raise ConfigError(f"configs is empty; give at least one {noun} to train")
    shapes = {c.shape() for c in configs}
    if len(shapes) > 1:
        raise ConfigError(f"{plural} of different shapes {sorted(shapes)} cannot be trained as one batch{grouping}")
    lrs = [check_lr(lr) for lr in lrs]
    if len(lrs) != len(configs):
        raise ConfigError(f"{len(lrs)} learning rates for {len(configs)} {plural}; give one per {per}")
    return lrs


def check_lr(lr) -> float:
    """A learning rate: finite and > 0 (ConfigError otherwise)."""
    return check_positive("lr", lr)
