"""Are the outputs of this tree byte-identical to those of another commit (timings aside)?

    python bench/identical_outputs.py --ref a5734cd               # main job, shipped experiments, paper figure
    python bench/identical_outputs.py --ref a5734cd --only main   # the main job alone (seconds)

Runs each job of JOBS twice, as a user runs it (a fresh process, a fresh output folder): once in a clean
checkout of ``--ref`` and once in this tree. Then compares every file the two runs wrote:
  - JSON files and CSV files after removing timing fields (keys and columns whose name says wall time,
    seconds or a rate per second) and writing the output folder's path as <out>: the remaining values are
    compared exactly, floats to the bit;
  - every other file (PNG, PDF, NPZ, ...) byte for byte, a PDF's /CreationDate (a time stamp) aside.
Prints one line per file and exits 0 when every file matches, 1 otherwise. Writes only into temporary
folders (kept with --keep DIR). The whole comparison takes about 2 x 5 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name -> command (run in the checkout's root, OUT replaced by the job's output folder)
JOBS = {
    "main": [sys.executable, "-m", "dynamics.run", "--S", "16", "--R", "4", "--D", "8", "--quiet", "--out", "OUT"],
    "experiments": [sys.executable, "experiments/shipped.py", "--out", "OUT"],
    "paper": [sys.executable, "-m", "figures.paper", "--quiet", "--out", "OUT"],
}
TIMING = re.compile(r"wall|seconds|per_second|elapsed")
PDF_DATE = re.compile(rb"/CreationDate \(D:[0-9Z+\-']*\)")


def without_timings(value, out: str = ""):
    """``value`` (parsed JSON) with every dict key that names a timing removed, at any depth, and the output
    folder's path (``out``, which differs between the two runs) written as <out>."""
    if isinstance(value, dict):
        return {k: without_timings(v, out) for k, v in value.items() if not TIMING.search(k)}
    if isinstance(value, list):
        return [without_timings(v, out) for v in value]
    if out and isinstance(value, str):
        return value.replace(out, "<out>")
    return value


def csv_rows(path) -> list[list[str]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return rows
    keep = [k for k, name in enumerate(rows[0]) if not TIMING.search(name)]
    return [[row[k] for k in keep if k < len(row)] for row in rows]


def same(a: str, b: str, out_a: str, out_b: str) -> bool:
    if a.endswith(".json"):
        with open(a) as fa, open(b) as fb:
            return without_timings(json.load(fa), out_a) == without_timings(json.load(fb), out_b)
    if a.endswith(".csv"):
        return csv_rows(a) == csv_rows(b)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        data_a, data_b = fa.read(), fb.read()
    if a.endswith(".pdf"):
        data_a, data_b = (PDF_DATE.sub(b"", data) for data in (data_a, data_b))
    return data_a == data_b


def files_under(folder) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs}


def run_job(checkout: str, command: list[str], out: str) -> None:
    env = dict(os.environ, PYTHONPATH=checkout, PYTHONHASHSEED="0")
    cmd = [out if part == "OUT" else part for part in command]
    proc = subprocess.run(cmd, cwd=checkout, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} in {checkout} exited {proc.returncode}:\n{proc.stderr[-2000:]}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", required=True, help="the git commit (or branch) to compare this tree with")
    p.add_argument("--only", nargs="+", choices=sorted(JOBS), default=sorted(JOBS), help="jobs to compare")
    p.add_argument("--keep", metavar="DIR", help="keep both runs' outputs in DIR (default: a removed temp folder)")
    a = p.parse_args(argv)
    work = a.keep or tempfile.mkdtemp(prefix="identical-")
    os.makedirs(work, exist_ok=True)
    ref = os.path.join(work, "ref-checkout")
    if not os.path.isdir(ref):
        subprocess.run(["git", "clone", "-q", ROOT, ref], check=True)
    subprocess.run(["git", "-C", ref, "checkout", "-q", a.ref], check=True)
    mismatched = 0
    try:
        for name in a.only:
            outs = {}
            for side, checkout in (("ref", ref), ("tree", ROOT)):
                outs[side] = os.path.join(work, side, name)
                shutil.rmtree(outs[side], ignore_errors=True)
                print(f"running {name} in {side} ...", file=sys.stderr, flush=True)
                run_job(checkout, JOBS[name], outs[side])
            names = files_under(outs["ref"]) | files_under(outs["tree"])
            for rel in sorted(names):
                a_path, b_path = (os.path.join(outs[s], rel) for s in ("ref", "tree"))
                if not (os.path.exists(a_path) and os.path.exists(b_path)):
                    verdict = "only in " + ("ref" if os.path.exists(a_path) else "tree")
                else:
                    verdict = "identical" if same(a_path, b_path, outs["ref"], outs["tree"]) else "DIFFERENT"
                mismatched += verdict != "identical"
                print(f"{name}/{rel}: {verdict}")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{mismatched} file(s) differ" if mismatched else "every output file is identical (timings aside)")
    return 1 if mismatched else 0


if __name__ == "__main__":
    sys.exit(main())
