"""What the derivation of one configuration (analysis.theory.derivation.derive_reduction) costs, estimated from
its sizes before anything is allocated, and the check that refuses what does not fit (python -m analysis.derive).

    from analysis.theory.cost import derive_cost
    derive_cost(TaskConfig(S=400, R=20, D=8, facts="random"), alpha=1e-5, exact=False)

Memory: the arrays the derivation allocates, in float64 (8 bytes):

* the task: answers, weights and the table's temporaries, ~6 arrays of S x R;
* the origin rates (analysis.theory.escape.origin_rates): the (R, |A|) answer masses m and m*m, |A| = R D;
* each step of the escape schedule: the (S + R + 2, |A|) gradient rows G and their squares, and ~6 (R, |A|)
  per-subject predictions and pooled masses;
* with the exact staircase and hallucination stage off uniform data: the full flow (FlowConfig's own estimate);
* a fixed BASE_BYTES for the interpreter, numpy and sympy (300 MiB resident measured at S16/R4/D8).

Time: a fixed BASE_SECONDS (imports and the sympy algebra: ~6.5 s measured), plus the escape schedule: its
steps (at most S + R + 1, one per escaping mode; ~3 on uniform structured or balanced tables, where whole
classes escape together) times S subject iterations, each ~ITER_SECONDS + ELEMENT_SECONDS x R |A|; plus, off
uniform data with the exact staircase, two full flows (staircase and hallucination) of ~FLOW_EVALUATIONS
right-hand sides, each ~EVAL_SECONDS + LOGIT_SECONDS x S R |A|. The constants were measured on the 2-core x86
CPU the tests run on (2026-12): escape schedules of random tables from S200/R20/D8 to S800/R8/D4 took 25-56 us
per subject iteration; flows S64/R8/D8, S256/R8/D8, S128/R16/D16 on random tables took 9,386, 13,736 and 8,516
evaluations at 229, 319 and 573 us each. The estimate is meant to be within a factor 3 of the measured time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from common.errors import ConfigError

BASE_BYTES = 400 * 2**20
BASE_SECONDS = 8.0
ITER_SECONDS = 30e-6
ELEMENT_SECONDS = 3e-9
FLOW_EVALUATIONS = 15_000
EVAL_SECONDS = 2e-4
LOGIT_SECONDS = 1e-9
REDUCED_EXACT_SECONDS = 2.0  # the two-mode quadrature of uniform data (S16/R4/D8: 1.3 s)
MAX_MINUTES = 10.0  # default time cap of python -m analysis.derive (--max-minutes)


@dataclass(frozen=True)
class DeriveCost:
    """Estimated peak memory (bytes) and run time (seconds) of one derivation, and the parts of each."""

    bytes: int
    seconds: float
    schedule_steps: int
    flow_bytes: int
    flow_seconds: float

    def describe(self) -> str:
        return (f"about {self.bytes / 2**30:,.3g} GiB and {_duration(self.seconds)} "
                f"({self.schedule_steps:,} escape steps" +
                (f", two full flows of ~{_duration(self.flow_seconds / 2)} each" if self.flow_seconds else "") + ")")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:,.3g} minutes"
    return f"{seconds / 3600:,.3g} hours"


def _uniform(task) -> bool:
    """Uniform frequencies on a structured or balanced table (the class reduction's case; D | S checked elsewhere)."""
    return task.zipf_subjects == 0 and task.zipf_relations == 0 and task.facts in ("structured", "balanced")


def derive_cost(task, alpha: float = 1e-5, *, exact: bool = True) -> DeriveCost:
    """The estimate for ``task`` (a models.TaskConfig) at this ``alpha`` (module docstring). Imports nothing heavy
    except where the exact full flow is part of the derivation (then dynamics.FlowConfig gives its memory)."""
    S, R, D = task.S, task.R, task.D
    A = R * D
    uniform = _uniform(task) and S % D == 0
    general = alpha < 1  # the staircase and hallucination stage are expansions in log(1/alpha)
    mem = BASE_BYTES + 8 * 6 * S * R
    secs = BASE_SECONDS
    steps, flow_bytes, flow_secs = 0, 0, 0.0
    if general:
        mem += 8 * (2 * R * A + 2 * (S + R + 2) * A + 6 * R * A)
        steps = 3 if uniform else S + R + 1
        secs += steps * S * (ITER_SECONDS + ELEMENT_SECONDS * R * A)
        if exact and uniform:
            secs += REDUCED_EXACT_SECONDS
        elif exact:
            flow_secs = 2 * FLOW_EVALUATIONS * (EVAL_SECONDS + LOGIT_SECONDS * S * R * A)
            flow_bytes = _flow_bytes(task, alpha)
            secs += flow_secs
    return DeriveCost(bytes=int(max(mem, BASE_BYTES + flow_bytes)), seconds=float(secs), schedule_steps=int(steps),
                      flow_bytes=int(flow_bytes), flow_seconds=float(flow_secs))


def _flow_bytes(task, alpha: float) -> int:
    """Peak memory of the full flow of ``task`` (dynamics.FlowConfig.memory_estimate_bytes; loads torch, held
    back from signals as every program's native imports are)."""
    from common.signals import import_native

    import_native("torch")
    from dynamics.flow.config import FlowConfig
    from models.linear import FLOW_ALPHA

    a = alpha if FLOW_ALPHA.contains(alpha) else 1e-5
    return int(FlowConfig(task=task, alpha=a).memory_estimate_bytes())


def check_derive_cost(task, alpha: float = 1e-5, *, exact: bool = True, max_minutes: float = MAX_MINUTES,
                      available: int | None = None) -> DeriveCost:
    """The estimate, or ConfigError (with it) where it needs more than 80 % of the available memory
    (common.memory.available_memory_bytes) or more than ``max_minutes``."""
    from common.memory import available_memory_bytes

    cost = derive_cost(task, alpha, exact=exact)
    have = available if available is not None else available_memory_bytes()
    what = f"S = {task.S}, R = {task.R}, D = {task.D} (facts {task.facts})"
    if cost.bytes > 0.8 * have:
        raise ConfigError(f"{what}: the derivation needs {cost.describe()} but this machine has "
                          f"{have / 2**30:,.1f} GiB available; reduce S, R or D")
    if not (max_minutes > 0 and math.isfinite(max_minutes)):
        raise ConfigError(f"max_minutes = {max_minutes!r} must be a positive number")
    if cost.seconds > 60 * max_minutes:
        hint = "" if not cost.flow_seconds else ", or --leading-only to skip the exact flows"
        raise ConfigError(f"{what}: the derivation would take {cost.describe()}, more than --max-minutes "
                          f"{max_minutes:g}; reduce S, R or D{hint}, or raise --max-minutes")
    if cost.flow_bytes:  # the exact flows must also get off their plateau: the noise stiffness of a large T
        from dynamics.flow.config import FlowConfig
        from dynamics.flow.reach import check_noise_stiffness

        check_noise_stiffness(FlowConfig(task=task, alpha=alpha))
    return cost
