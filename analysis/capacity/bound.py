"""The information-theoretic bound on capacity (SPEC §9): N facts with M possible outputs each take N·log2 M bits,
and P parameters of b bits each hold at most P·b bits, so N·log2 M(N) <= P·b."""
from __future__ import annotations

import math

import numpy as np

from common.errors import ConfigError, check_positive


def check_bits_per_param(value) -> float:
    """``value`` as a float if finite and > 0, else ConfigError (one line)."""
    return check_positive("bits_per_param", value)


def max_facts(total_bits: float, outputs) -> float:
    """The largest (real) N with N·log2 M(N) <= total_bits: the root of N·log2 M(N) = total_bits.

    outputs: M as a number (a fixed set of outputs) or a function N -> M (identity target: M = N), with
    N·log2 M(N) non-decreasing in N. Returns inf when M(N) <= 1 for every N (no information per fact)."""
    B = check_positive("total_bits", total_bits)
    if not callable(outputs):
        M = check_positive("M", outputs)
        return math.inf if M <= 1 else B / math.log2(M)
    bits = lambda n: n * math.log2(max(float(outputs(n)), 1.0))  # noqa: E731
    lo, hi = 1.0, 2.0
    while bits(hi) < B:  # bracket the root by doubling, then bisect (bits is monotone in N)
        lo, hi = hi, 2 * hi
        if hi > 1e300:
            return math.inf
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if bits(mid) < B:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return 0.5 * (lo + hi)


def bound_line(params, bits_per_param: float, outputs):
    """(params, N_max) as float arrays: the bound max_facts(P·b, outputs) at each parameter count P."""
    b = check_bits_per_param(bits_per_param)
    P = np.asarray(params, dtype=float).ravel()
    if P.size == 0 or np.any(~np.isfinite(P)) or np.any(P <= 0):
        raise ConfigError("params of the bound line must be finite and > 0")
    return P, np.array([max_facts(p * b, outputs) for p in P])
