"""Benchmark of the exact flow: whole CLI process and integration time.

    python bench/flow.py                      # S16/R4/D8: 5 repeats of the whole process
    python bench/flow.py --S 1024 --R 32 --D 32 --repeats 1

Prints one line per repeat and the median; writes nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--S", type=int, default=16, help="number of subjects (default 16)")
    p.add_argument("--R", type=int, default=4, help="number of relations (default 4)")
    p.add_argument("--D", type=int, default=8, help="answers per relation (default 8)")
    p.add_argument("--repeats", type=int, default=5,
                   help="runs of the whole process; the median is reported (default 5)")
    p.add_argument("--extra", default="", help="extra flags for dynamics.run, quoted")
    a = p.parse_args(argv)
    walls, integ = [], []
    for i in range(a.repeats):
        with tempfile.TemporaryDirectory() as d:
            cmd = [sys.executable, "-m", "dynamics.run", "--S", str(a.S), "--R", str(a.R), "--D", str(a.D),
                   "--out", os.path.join(d, "run"), "--quiet", *a.extra.split()]
            t0 = time.perf_counter()
            subprocess.run(cmd, cwd=ROOT, check=True)
            wall = time.perf_counter() - t0
            res = json.load(open(os.path.join(d, "run", "results.json")))
        walls.append(wall)
        integ.append(res["integration_seconds"])
        s = res["solver"]
        print(f"repeat {i}: process {wall:.2f} s, integration {res['integration_seconds']:.3f} s, "
              f"run_flow {res['wall_seconds']:.3f} s, {s['n_steps']} steps, {s['nfe']} RHS evaluations, "
              f"t3={res['phases']['t3']}")
    print(f"median over {a.repeats}: process {statistics.median(walls):.2f} s, "
          f"integration {statistics.median(integ):.3f} s  (cpus: {os.cpu_count()})")


if __name__ == "__main__":
    main()
