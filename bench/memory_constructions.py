"""Accuracy of the memory constructions (SPEC §8) against the number of associations N at a fixed model size,
beside trained memories of the same size (docs/capacity.md):

    python bench/memory_constructions.py --out runs/memory-constructions
    python bench/memory_constructions.py --Ns 8 16 --seeds 0 --max-steps 32 --out /tmp/mc   # seconds

For each memory of SHAPES (identity target, M = N) and each N in --Ns: the construction's accuracy on each
seed's instance (correlation memory for the linear memory; random features + least squares for the MLP) and
the best accuracy of full-batch Adam training on the same instance (the docs' settings: lr 1 for linear,
0.03 and 0.1 for the MLP, the best over them; --max-steps steps, early stop at 99 %). Writes
constructions.json (settings, rows, seconds, machine) into --out and prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from common.io import write_json  # noqa: E402

SHAPES = {  # label: (model, d, m, learning rates)
    "linear (d=32)": ("linear", 32, 0, (1.0,)),
    "MLP (d=16, m=32)": ("mlp", 16, 32, (3e-2, 1e-1)),
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--Ns", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512],
                   help="numbers of associations N (default 16 32 64 128 256 512)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="default 0 1 2")
    p.add_argument("--max-steps", type=int, default=4096, help="Adam steps of the trained memories (default 4096)")
    p.add_argument("--out", required=True, help="folder for constructions.json (created if missing)")
    a = p.parse_args(argv)
    from dynamics.capacity_training import MemoryTrainConfig, train_batch
    from models.memory import MemoryConfig
    from models.memory.constructions import construction_accuracy

    train = MemoryTrainConfig(max_steps=a.max_steps, record=False)
    rows, start = [], time.perf_counter()
    for label, (model, d, m, lrs) in SHAPES.items():
        for N in a.Ns:
            configs = [MemoryConfig(model=model, N=N, d=d, m=m, seed=s) for s in a.seeds]
            built = [construction_accuracy(c) for c in configs]
            run = train_batch([c for c in configs for _ in lrs], list(lrs) * len(configs), train)
            trained = run.best_accuracy.reshape(len(configs), len(lrs)).max(axis=1)
            rows.append(dict(memory=label, model=model, d=d, m=m, N=N, seeds=list(a.seeds), lrs=list(lrs),
                             construction=built, trained=[float(x) for x in trained]))
            print(f"{label} N={N}: construction {np.round(built, 3).tolist()}, trained {np.round(trained, 3).tolist()} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    os.makedirs(a.out, exist_ok=True)
    write_json(os.path.join(a.out, "constructions.json"),
               dict(settings=dict(Ns=a.Ns, seeds=a.seeds, max_steps=a.max_steps), rows=rows,
                    seconds=time.perf_counter() - start,
                    machine=f"os.cpu_count()={os.cpu_count()} {platform.processor() or platform.machine()}",
                    load=[round(x, 2) for x in os.getloadavg()]))
    print("\n| memory | N | construction, per seed | trained (best accuracy), per seed |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['memory']} | {r['N']} | {', '.join(f'{x:.3f}' for x in r['construction'])} | "
              f"{', '.join(f'{x:.3f}' for x in r['trained'])} |")


if __name__ == "__main__":
    main()
