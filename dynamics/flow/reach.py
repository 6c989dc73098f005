"""What a flow can reach: loss targets float64 resolves, flow times worth integrating, and sequence lengths
whose noise stiffness an explicit solver can step through in its budget. Each check raises ConfigError with
the reason and the numbers; docs/numerics.md ("What a run can reach") states the rules.

Imports nothing heavy: the programs call these before torch builds anything.
"""
from __future__ import annotations

import math

from common.errors import ConfigError

# The population loss is sum_sr w_sr (log Z_sr - u*_sr) with log Z_sr = ref + log(sum exp(u - ref)); once the
# true answer leads, ref = u* and the fact's loss is log(1 + eps_sr) computed in float64, which resolves eps_sr
# to ~1.1e-16 absolute. A target of 1e-15 is resolved to ~10 %; below that the computed loss is rounding.
LOSS_TARGET_MIN = 1e-15
# After convergence the margins grow like log t and the loss falls like ~1/t (measured at S16/R4/D8: 3.7e-13 at
# t = 1.8e12, 3.9e-14 at t = 1.6e13), so by t ~ 1e16 it is below LOSS_TARGET_MIN and nothing float64 shows changes;
# every further decade of t still costs ~2,000 solver steps (~1.7 s at S16/R4/D8). 1e18 leaves a factor 100.
T_MAX_LIMIT = 1e18
STEPS_PER_DECADE = 2_000  # accepted DOPRI5 steps per decade of t once converged (S16/R4/D8, rtol 1e-9)
# Largest stable h * |lambda| on the negative real axis of the explicit methods with a bounded stability region
# (rounded up, so the step counts below are lower bounds); rock4 and the implicit methods are not limited this way.
EXPLICIT_STABILITY = {"dopri5": 3.4, "RK45": 3.4, "DOP853": 6.1, "dopri8": 6.1, "RK23": 2.6, "bosh3": 2.6,
                      "adaptive_heun": 2.1, "fehlberg2": 2.1}


def check_loss_target(value: float, name: str = "loss_target") -> float:
    """``value`` if float64 can resolve it as a loss level (>= LOSS_TARGET_MIN), else ConfigError."""
    if value is not None and value < LOSS_TARGET_MIN:
        raise ConfigError(
            f"{name} = {value:g} is below what the float64 loss resolves: a learned fact's loss is log(1 + eps), "
            f"exact only to ~1.1e-16, so the loss cannot be resolved (or reached in any step budget) below "
            f"{LOSS_TARGET_MIN:g}; use {name} >= {LOSS_TARGET_MIN:g}")
    return value


def check_flow_time(value: float, name: str = "t_max") -> float:
    """``value`` if a flow time worth integrating (<= T_MAX_LIMIT), else ConfigError with the step estimate."""
    if value is not None and value > T_MAX_LIMIT:
        steps = STEPS_PER_DECADE * math.log10(value / 1e3) if math.isfinite(value) else math.inf
        raise ConfigError(
            f"{name} = {value:g} is longer than any flow needs: once converged the loss falls like ~1/t and is "
            f"below float64's resolution ({LOSS_TARGET_MIN:g}) long before t = {T_MAX_LIMIT:g}, while reaching "
            f"{name} would still take ~{steps:,.0f} solver steps ({STEPS_PER_DECADE:,} per decade of t); "
            f"use {name} <= {T_MAX_LIMIT:g}")
    return value


def noise_stiffness(T: int, N: int, num_answers: int, k_noise: float) -> float:
    """Largest |eigenvalue| of the flow's Jacobian along a noise token at the start, 1/time.

    The noise enters every logit as (T-3) W_n K_n and a noise token's gradient is (T-3)/N times the EOS one, so
    along W_n the Jacobian is -(T-3)^2/N K_n^2 H, H the fact-averaged Hessian of the loss in the logits; at the
    symmetric start H = (I - 11^T/|A|)/|A| (largest eigenvalue 1/|A|). It grows as (T-3)^2: large T is stiff.
    """
    return (T - 3) ** 2 * k_noise ** 2 / (N * num_answers)


def min_escape_time(task, alpha: float) -> float:
    """A lower bound on the flow time before the loss leaves its initial plateau (``task`` a TaskConfig): the
    first subject or relation mode escapes after log(1/alpha) e-folds of its origin rate (analysis.theory.escape),
    lambda_s = p(s) sqrt(sum_r q^2 - 1/|A|) <= p_max sqrt(q_max) and lambda_r = q(r) sqrt(sum_a P_r(a)^2 - 1/|A|)
    <= q_max sqrt(P2 - 1/|A|), P2 = 1/D for structured and balanced tables under uniform p(s), else at most 1."""
    A = task.R * task.D
    p_max, q_max = _zipf_max(task.S, task.zipf_subjects), _zipf_max(task.R, task.zipf_relations)
    even = task.facts in ("structured", "balanced") and task.zipf_subjects == 0
    lam_r = q_max * math.sqrt(max((1 / task.D if even else 1.0) - 1 / A, 0.0))
    lam_s = p_max * math.sqrt(q_max)
    return math.log(1 / alpha) / max(lam_r, lam_s)


def check_noise_stiffness(config) -> None:
    """ConfigError when ``config`` (a FlowConfig, balanced or uniform init, explicit solver) cannot get past
    its initial plateau in its step budget: its steps are at most EXPLICIT_STABILITY / noise_stiffness long,
    and it needs at least min_escape_time to get anywhere."""
    beta = EXPLICIT_STABILITY.get(config.method)
    if config.init == "file" or beta is None or not config.alpha < 1:
        return
    t = config.task
    lam = noise_stiffness(t.T, t.N, t.R * t.D, config.alpha)
    h = beta / lam if lam > 0 else math.inf
    t_need = min(min_escape_time(t, config.alpha), config.t_max)
    steps = t_need / h
    if steps > config.max_steps:
        T_ok = 3 + math.isqrt(int(beta * config.max_steps / t_need * t.N * t.R * t.D / config.alpha ** 2))
        raise ConfigError(
            f"T = {t.T}: the noise tokens make the flow stiff (Jacobian eigenvalue (T-3)^2 alpha^2 / (N |A|) = "
            f"{lam:.3g}), so {config.method} steps at most {h:.3g} in t and needs >= {steps:,.0f} steps to leave the "
            f"initial plateau (t >= {t_need:.3g}), more than max_steps = {config.max_steps:,}; use T <= {T_ok:,} "
            f"or a larger N")


def _zipf_max(n: int, beta: float) -> float:
    """Largest Zipf frequency (s+1)^-beta / sum: the first one, 1 / H_n(beta) (1/n when beta = 0)."""
    if beta == 0:
        return 1.0 / n
    # past 100,000 terms the partial sum is smaller than the whole: its inverse is an upper bound, as needed
    return 1.0 / math.fsum((k + 1) ** -beta for k in range(min(n, 100_000)))
