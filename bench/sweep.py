"""Benchmark of the batched reduced sweep: 10,000 configurations to t3 (exact quadrature of the reduced flow),
and their SPEC §3 plateaus (sweep.csv's plateau_loss).

    python bench/sweep.py                       # 10,000 configs, alpha in [1e-6, 1e-3], 5 repeats
    python bench/sweep.py --alpha-hi 1e-1       # include large alpha (the O(alpha^2) quadrature term is on)

Prints one line per repeat and the median; writes nothing. The first call also pays for the lambdified
rates (sympy), reported separately.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10_000, help="number of random configurations (default 10000)")
    p.add_argument("--alpha-lo", type=float, default=1e-6,
                   help="smallest initialization scale, drawn log-uniformly (default 1e-6)")
    p.add_argument("--alpha-hi", type=float, default=1e-3,
                   help="largest initialization scale (default 1e-3; 1e-1 turns the O(alpha^2) term on)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats; the median is reported (default 5)")
    a = p.parse_args(argv)
    from analysis.predict import escape_rates, phase_times, plateaus

    rng = np.random.default_rng(0)
    D = rng.choice([2, 4, 8, 16, 32], a.n)
    S = D * rng.integers(1, 64, a.n)
    R = rng.integers(2, 65, a.n)
    alpha = np.exp(rng.uniform(np.log(a.alpha_lo), np.log(a.alpha_hi), a.n))
    t0 = time.perf_counter()
    escape_rates(16, 4, 8)
    print(f"one-off: lambdified rates ready in {time.perf_counter() - t0:.2f} s")
    walls, pwalls = [], []
    for i in range(a.repeats):
        t0 = time.perf_counter()
        p_ = phase_times(S, R, D, alpha)
        wall = time.perf_counter() - t0
        walls.append(wall)
        t0 = time.perf_counter()
        pl = plateaus(S, R, D, alpha, p_["t1"], p_["t2"])
        pwalls.append(time.perf_counter() - t0)
        bad = int(np.sum(~np.isfinite(p_["t3"])))
        print(f"repeat {i}: {a.n} configurations to t3 in {wall:.3f} s ({1e6 * wall / a.n:.1f} us each), "
              f"{bad} without t3; plateaus in {pwalls[-1]:.3f} s ({int(np.isfinite(pl['loss']).sum())} found)")
    print(f"median {statistics.median(walls):.3f} s per {a.n} to t3, {statistics.median(pwalls):.3f} s for the "
          f"plateaus (cpus: {os.cpu_count()})")


if __name__ == "__main__":
    main()
