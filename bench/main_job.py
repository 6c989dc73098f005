"""The main job against the paper's procedure, side by side (whole processes, figures included).

    python bench/main_job.py                 # 5 alternating repeats of each

main job:  python -m dynamics.run --S 16 --R 4 --D 8 (exact flow to t3, invariants, phases, three figures)
paper:     python -m models.train --model linear --optimizer sgd --init uniform --init-scale 1e-5 --lr 0.1
           --batch 1024 --steps 8192 (the published procedure: online SGD, its loss curve and figure)
Both run as a user runs them, each in a fresh process writing into a temporary folder; the two alternate so
that load on the machine affects both alike. Prints every run, the medians and their ratio; writes nothing.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = ["-m", "dynamics.run", "--S", "16", "--R", "4", "--D", "8", "--quiet"]
PAPER = ["-m", "models.train", "--model", "linear", "--optimizer", "sgd", "--init", "uniform", "--init-scale",
         "1e-5", "--lr", "0.1", "--batch", "1024", "--steps", "8192", "--quiet"]


def wall(args, out) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args, "--out", out], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="runs of each program; medians are reported (default 5)")
    a = p.parse_args(argv)
    mains, papers = [], []
    with tempfile.TemporaryDirectory() as d:
        for i in range(a.repeats):
            mains.append(wall(MAIN, os.path.join(d, f"m{i}")))
            papers.append(wall(PAPER, os.path.join(d, f"p{i}")))
            print(f"repeat {i}: main job {mains[-1]:.2f} s, paper's procedure {papers[-1]:.2f} s")
    m, q = statistics.median(mains), statistics.median(papers)
    print(f"median over {a.repeats}: main job {m:.2f} s, paper's procedure {q:.2f} s, ratio {q / m:.1f}x "
          f"(cpus: {os.cpu_count()})")


if __name__ == "__main__":
    main()
