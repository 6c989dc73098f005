"""Staged trainer runs over seeds (``frd-train --experiment FILE --seeds N``, SPEC §6.1 *Seeds*): a warm-up
curriculum (S = 32, R = 4, D = 8, balanced table; first the subjects 0..7 until their loss is 0.01, then all
subjects until the loss on all facts is 0.01) trained by model 1 (SGD) and by model 2 (Adam) at two embedding
dimensions, 5 seeds each, with the per-stage phase times over seeds and the seeds the step budget cut.

    python bench/staged_seeds.py --out runs/staged-seeds-bench      # about 2 to 3 minutes on 2 CPU cores

Prints one table row per (model, stage, set all/train): steps, t1, t2, t3 (mean ± std over the seeds that reached
them, and how many) and the seeds cut; writes each model's sweep folder under --out.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

EXPERIMENT = """\
[task]
S = 32
R = 4
D = 8
facts = "balanced"

[distributions.warmup]
subjects = "0:8"

[experiment]
eval = ["all", "train", "seen", "unseen"]

[[stages]]
name = "warmup"
train = "warmup"
until_loss = 0.01

[[stages]]
name = "all"
train = {}
until_loss = 0.01
"""
COMMON = ["--batch", "256", "--steps", "3000", "--eval-every", "50", "--device", "cpu", "--threads", "1",
          "--no-plots", "--quiet", "--overwrite", "--workers", "1"]
MODELS = {
    "model1-sgd": ["--model", "linear", "--optimizer", "sgd", "--init", "balanced", "--init-scale", "1e-2",
                   "--lr", "1.0"],
    "model2-adam-d64": ["--model", "softmax", "--optimizer", "adam", "--d", "64", "--lr", "0.1"],
    "model2-adam-d32": ["--model", "softmax", "--optimizer", "adam", "--d", "32", "--lr", "0.1"],
}


def fmt(st: dict, seeds: int) -> str:
    return "-" if not st["n"] else f"{st['mean']:.4g} ± {st['std']:.2g} ({st['n']}/{seeds})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/staged-seeds-bench",
                   help="folder of the experiment file and of one sweep folder per model (default "
                        "runs/staged-seeds-bench; an existing sweep there is started over)")
    p.add_argument("--seeds", type=int, default=5, help="seeds per model, 0 .. N-1 (default 5)")
    a = p.parse_args(argv)
    import json

    from models.train import main as train_main

    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "warmup32.toml")
    with open(path, "w") as f:
        f.write(EXPERIMENT)
    print("| model | stage | steps | set | t1 | t2 | t3 | cut (seeds) | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, flags in MODELS.items():
        out = os.path.join(a.out, name)
        t0 = time.perf_counter()
        status = train_main(["--experiment", path, "--seeds", str(a.seeds), "--out", out] + flags + COMMON)
        wall = time.perf_counter() - t0
        with open(os.path.join(out, "bands.json")) as f:
            g = json.load(f)["groups"][0]
        for s in g["stages"]:
            for v in ("all", "train"):
                ph = s["sets"][v]
                print(f"| {name} | {s['name']} | {fmt(s['steps'], a.seeds)} | {v} | {fmt(ph['t1'], a.seeds)} | "
                      f"{fmt(ph['t2'], a.seeds)} | {fmt(ph['t3'], a.seeds)} | {s['n_cut']} "
                      f"({', '.join(map(str, s['cut_seeds'])) or '-'}) | {wall:.0f} (exit {status}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
