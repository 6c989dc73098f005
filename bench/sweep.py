"""Benchmark of the batched reduced sweep: 10,000 configurations to t3 (exact quadrature of the reduced flow),
and their SPEC §3 plateaus (sweep.csv's plateau_loss).

    python bench/sweep.py                       # 10,000 configs, alpha in [1e-6, 1e-3], 5 repeats
    python bench/sweep.py --alpha-hi 1e-1       # include large alpha (the O(alpha^2) quadrature term is on)
    python bench/sweep.py --S 16 32 64 128 --alpha-lo 1e-3 --alpha-hi 1e-1 --n 100000 --repeats 3
    python bench/sweep.py --S 16 32 64 128 --whole --n 10000   # the whole `python -m analysis.sweep --no-plots`
    python bench/sweep.py --full 32              # 32 full-system rows (random table), one by one vs --batch-flows

Prints one line per repeat and the median (configurations per second for t1..t3, for the plateaus and for
both); writes nothing. The first call also pays for the lambdified rates (sympy), reported separately.
--S: subject counts drawn from these values (D from 2 4 8 16 dividing them); default S = D * U{1..63}.
--full K: time analysis.sweeps.phase_sweep.run_sweep on K full-system rows (S16/R4/D8, facts random, alphas log-spaced over
[alpha-lo, alpha-hi]) one by one (with trajectories and plateaus) and with batch_flows = K (phase times only), and
print the largest relative difference of t1, t2, t3 between the two.
--whole: time the whole sweep process instead, on the grid S x R {2 4 8 16 32} x D {2 4 8 16} x alphas (log-spaced
over [alpha-lo, alpha-hi], as many as give about --n configurations; D must divide S).
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
    p.add_argument("--S", type=int, nargs="+", default=None, help="subject counts to draw from (default: D * U{1..63})")
    p.add_argument("--whole", action="store_true", help="time the whole `python -m analysis.sweep --no-plots` process")
    p.add_argument("--full", type=int, default=0, metavar="K",
                   help="time K full-system rows one by one and batched instead (see above)")
    a = p.parse_args(argv)
    if a.whole:
        return whole(a)
    if a.full:
        return full_rows(a)
    from analysis.theory.modes import escape_rates
    from analysis.theory.plateau import plateaus
    from analysis.theory.reduced_solution import phase_times

    rng = np.random.default_rng(0)
    if a.S is None:
        D = rng.choice([2, 4, 8, 16, 32], a.n)
        S = D * rng.integers(1, 64, a.n)
    else:
        S = rng.choice(a.S, a.n)
        D = np.array([rng.choice([d for d in (2, 4, 8, 16) if s % d == 0]) for s in S])
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
    mw, mp = statistics.median(walls), statistics.median(pwalls)
    both = statistics.median([w + q for w, q in zip(walls, pwalls)])
    print(f"median {mw:.3f} s per {a.n} to t3, {mp:.3f} s for the plateaus (cpus: {os.cpu_count()}): "
          f"{a.n / mw:,.0f} configurations/s (phase times), {a.n / mp:,.0f} /s (plateaus), {a.n / both:,.0f} /s (both)")


def full_rows(a):
    from analysis.sweeps.phase_sweep import run_sweep

    k = a.full
    cols = dict(S=np.full(k, 16.0), R=np.full(k, 4.0), D=np.full(k, 8.0), T=np.full(k, 32.0), N=np.full(k, 20.0),
                alpha=np.geomspace(a.alpha_lo, a.alpha_hi, k))
    out = {}
    for name, b in (("one by one", 0), (f"batch_flows={k}", k)):
        t0 = time.perf_counter()
        out[name] = run_sweep(cols, facts="random", progress=False, batch_flows=b).columns
        wall = time.perf_counter() - t0
        print(f"{name}: {k} full-system rows in {wall:.2f} s = {k / wall:.1f} rows/s")
    one, bat = out.values()
    worst = max(float(np.max(np.abs(bat[c] - one[c]) / np.abs(one[c]))) for c in ("t1", "t2", "t3"))
    print(f"max relative difference of t1, t2, t3 (batched vs one by one): {worst:.1e} (cpus: {os.cpu_count()})")
    pl = float(np.max(np.abs(bat["plateau_loss"] - one["plateau_loss"]) / np.abs(one["plateau_loss"])))
    print(f"max relative difference of plateau_loss (batched vs one by one): {pl:.1e}")


def whole(a):
    import shutil
    import subprocess
    import tempfile

    S = a.S or [16, 32, 64, 128]
    R, D = [2, 4, 8, 16, 32], [2, 4, 8, 16]
    per_alpha = sum(1 for s in S for r in R for d in D if s % d == 0)
    if any(s % d for s in S for d in D):
        raise SystemExit("--whole needs every D in 2 4 8 16 to divide every S")
    n_alpha = max(1, round(a.n / per_alpha))
    n = per_alpha * n_alpha
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    walls = []
    for i in range(a.repeats):
        d = tempfile.mkdtemp()
        try:
            cmd = [sys.executable, "-m", "analysis.sweep", "--S", *map(str, S), "--R", *map(str, R),
                   "--D", *map(str, D),
                   "--alpha-range", str(a.alpha_lo), str(a.alpha_hi), str(n_alpha), "--no-plots", "--quiet",
                   "--out", os.path.join(d, "sweep")]
            t0 = time.perf_counter()
            subprocess.run(cmd, cwd=root, check=True)
            walls.append(time.perf_counter() - t0)
        finally:
            shutil.rmtree(d, ignore_errors=True)
        print(f"repeat {i}: whole sweep of {n} configurations in {walls[-1]:.2f} s ({n / walls[-1]:,.0f} /s)")
    m = statistics.median(walls)
    print(f"median {m:.2f} s for the whole `python -m analysis.sweep --no-plots` of {n} configurations "
          f"({n / m:,.0f} configurations/s, imports and CSV included; cpus: {os.cpu_count()})")


if __name__ == "__main__":
    main()
