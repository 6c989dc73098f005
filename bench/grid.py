"""Runs per second of a flow sweep (analysis.sweeps.runner): in this process one after another, on a Dask LocalCluster,
and with the batched solver.

    python bench/grid.py                       # 24 random-table S16/R4/D8 flows: serial vs 2 local workers
    python bench/grid.py --n 48 --workers 2 --batch 8
    python bench/grid.py --n 128 --batch 64 --skip-serial   # the batched solver in process and on 2 workers

Each way runs the same grid into a fresh sweep folder (results.jsonl appended, results.csv written) and prints
runs per second: the wall time of the whole sweep, including the LocalCluster's start (its worker processes
import torch) and stop. The cluster's numbers are checked equal to the serial ones.
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from analysis.sweeps.dask_tasks import open_client
from analysis.sweeps.runner import run_grid
from analysis.sweeps.spec import SweepSpec  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=24, help="number of flows (random tables, seeds 0..n-1; default 24)")
    p.add_argument("--S", type=int, default=16, help="subjects (default 16)")
    p.add_argument("--R", type=int, default=4, help="relations (default 4)")
    p.add_argument("--D", type=int, default=8, help="answers per relation (default 8)")
    p.add_argument("--alpha", type=float, default=1e-5, help="balanced initialization scale (default 1e-5)")
    p.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (default 2)")
    p.add_argument("--batch", type=int, default=0,
                   help="also run the sweep with the batched solver, this many flows per task (default 0: not)")
    p.add_argument("--rtol", type=float, default=None, help="relative tolerance of every flow (default: dynamics' 1e-9)")
    p.add_argument("--skip-serial", action="store_true",
                   help="skip the serial and the plain cluster sweeps (time only the batched ones)")
    a = p.parse_args(argv)
    base = dict(S=a.S, R=a.R, D=a.D, facts="random", alpha=a.alpha)
    if a.rtol is not None:
        base["rtol"] = a.rtol
    grid = tuple({"seed": s} for s in range(a.n))
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        def sweep(name, **kw):
            spec = SweepSpec(kind="flow", base=base, grid=grid, out=os.path.join(tmp, name),
                             batch=kw.pop("batch", 1))
            t0, c0 = time.perf_counter(), time.process_time()
            res = run_grid(spec, **kw)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            assert res.done == a.n, res
            rows[name] = res.rows
            print(f"  ({name}: this process used {cpu:.2f} s of CPU in {wall:.2f} s)")
            return wall

        if not a.skip_serial:
            ts = sweep("serial", workers=1)
            print(f"serial (in process, one after another): {a.n} runs in {ts:.2f} s = {a.n / ts:.2f} runs/s")
        t0 = time.perf_counter()
        with open_client("local", a.workers) as client:
            up = time.perf_counter() - t0
            if not a.skip_serial:
                td = sweep("cluster", client=client)
                print(f"LocalCluster, {a.workers} workers: {a.n} runs in {td:.2f} s = {a.n / td:.2f} runs/s on a "
                      f"started cluster (its start took {up:.1f} s)")
            if a.batch > 1:
                tc = sweep("batched-cluster", client=client, batch=a.batch)
                print(f"batched solver, {a.batch} flows per task, LocalCluster of {a.workers} workers: {a.n} runs in "
                      f"{tc:.2f} s = {a.n / tc:.2f} runs/s on a started cluster")
        whole = time.perf_counter() - t0
        print(f"the cluster part took {whole:.2f} s with the cluster's start ({up:.1f} s) and stop")
        if not a.skip_serial:
            same = all(x["key"] == y["key"] and all(x[k] == y[k] for k in ("t1", "t2", "t3", "nfe", "plateau_loss"))
                       for x, y in zip(rows["serial"], rows["cluster"]))
            print(f"cluster numbers equal to the serial ones: {same}")
        if a.batch > 1:
            tb = sweep("batched", workers=1, batch=a.batch)
            print(f"batched solver, {a.batch} flows per task, in process: {a.n} runs in {tb:.2f} s = "
                  f"{a.n / tb:.2f} runs/s (phase times, plateaus and step counts)")
            same = all(x["key"] == y["key"] and all(x[k] == y[k] for k in ("t1", "t2", "t3", "nfe"))
                       for x, y in zip(rows["batched"], rows["batched-cluster"]))
            print(f"batched numbers on the cluster equal to those in process: {same}")


if __name__ == "__main__":
    main()
