"""Batched exact flows against the same flows run one after another (dynamics.flow.batched vs dynamics.flow.solve).

    python bench/batched.py                 # 64 random-table S16/R4/D8 flows, both ways
    python bench/batched.py --n 256 --singles 8
    python bench/batched.py --n 64 --singles 0 --rtol 1e-6 --accuracy   # faster, and how exact
    python bench/batched.py --n 512 --singles 0 --slots 128               # continuous batching
    python bench/batched.py --n 256 --singles 16 --plateau                # with each run's plateau (SPEC §3)

Prints flows per second for both ways (integration to t3, phase times located) and the largest relative
difference of t1, t2, t3 between a batched run and its single run.
"""
import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from analysis.phases import batched_plateau, flow_plateau, thresholds  # noqa: E402
from dynamics.flow.batched import run_flows_batched  # noqa: E402
from dynamics.flow.config import FlowConfig  # noqa: E402
from dynamics.flow.solve import run_flow  # noqa: E402
from models.task import TaskConfig, make_task  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=64, help="number of flows (random tables, seeds 0..n-1); default 64")
    p.add_argument("--S", type=int, default=16, help="subjects (default 16)")
    p.add_argument("--R", type=int, default=4, help="relations (default 4)")
    p.add_argument("--D", type=int, default=8, help="answers per relation (default 8)")
    p.add_argument("--alpha", type=float, default=1e-5, help="balanced initialization scale (default 1e-5)")
    p.add_argument("--rtol", type=float, default=None,
                   help="relative tolerance of every flow, batched and single alike (default: dynamics' 1e-9)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for the batched run (default: one below 200,000 batched state entries, "
                        "as run_flow; 0 = torch's default, all cores)")
    p.add_argument("--slots", type=int, default=None,
                   help="at most this many flows at once, a waiting flow taking the place of each that finishes "
                        "(default: all n at once)")
    p.add_argument("--plateau", action="store_true",
                   help="also locate each run's plateau (plateau=True and analysis.phases.flow_plateau on its window), "
                        "as analysis.sweep --batch-flows does; compared with the single runs' plateaus")
    p.add_argument("--singles", type=int, default=None,
                   help="how many of the flows to also run one after another with run_flow (default: all n; "
                        "their rate is flows per second over these)")
    p.add_argument("--accuracy", action="store_true",
                   help="also run the same flows batched at rtol 1e-12 and print the largest relative error of t1, t2, "
                        "t3 at --rtol against them")
    a = p.parse_args(argv)
    configs = [FlowConfig(task=TaskConfig(S=a.S, R=a.R, D=a.D, facts="random", seed=s), alpha=a.alpha, rtol=a.rtol)
               for s in range(a.n)]
    t0 = time.perf_counter()
    plateaus = {}

    def locate(i, res):
        plateaus[i] = batched_plateau(res)

    out = run_flows_batched(configs, threads=a.threads, slots=a.slots, plateau=a.plateau,
                            on_done=locate if a.plateau else None)
    tb = time.perf_counter() - t0
    print(f"batched: {a.n} flows in {tb:.2f} s = {a.n / tb:.1f} flows/s "
          f"(threads {a.threads}; slots {a.slots or a.n}; plateaus {'located' if a.plateau else 'not located'}; steps {min(o['n_steps'] for o in out)}..{max(o['n_steps'] for o in out)})")
    if a.accuracy:
        ref = run_flows_batched([FlowConfig(task=c.task, alpha=c.alpha, rtol=1e-12) for c in configs], threads=a.threads)
        err = max(abs(o[k] - r[k]) / abs(r[k]) for o, r in zip(out, ref) for k in ("t1", "t2", "t3"))
        print(f"max relative error of t1, t2, t3 at rtol {configs[0].resolved_rtol:g} against rtol 1e-12: {err:.1e}")
    m = a.n if a.singles is None else min(a.singles, a.n)
    worst = worst_plateau = 0.0
    t0 = time.perf_counter()
    for i, (c, o) in enumerate(zip(configs[:m], out[:m])):
        task = make_task(c.task)
        levels = thresholds(task.log_A, task.H_A_given_R, c.eps_conv)
        run = run_flow(c, levels=levels)
        for k, lv in zip(("t1", "t2", "t3"), levels):
            x, y = o[k], run.crossings[lv]
            worst = max(worst, 0.0 if x == y else (math.inf if x is None or y is None else abs(x - y) / abs(y)))
        if a.plateau and run.crossings[levels[0]] is not None and run.crossings[levels[1]] is not None:
            ps, pb = flow_plateau(run, run.crossings[levels[0]], run.crossings[levels[1]]), plateaus.get(i)
            worst_plateau = max(worst_plateau, math.inf if pb is None else
                                max(abs(pb.t - ps.t) / ps.t, abs(pb.loss - ps.loss) / abs(ps.loss)))
    ts = time.perf_counter() - t0
    if m:
        print(f"single:  {m} flows in {ts:.2f} s = {m / ts:.1f} flows/s (run_flow, one after another)")
        print(f"max relative difference of t1, t2, t3 (batched vs single): {worst:.2e}")
        if a.plateau:
            print(f"max relative difference of the plateau's time and loss (batched vs single): {worst_plateau:.2e}")


if __name__ == "__main__":
    main()
