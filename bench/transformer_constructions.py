"""Accuracy of the transformer constructions (SPEC §8) against the number of facts S·R at a fixed model size,
beside trained transformers of the same size and task (docs/capacity.md):

    python bench/transformer_constructions.py --out runs/transformer-constructions
    python bench/transformer_constructions.py --sizes 2 4 --seeds 0 --max-steps 64 --out /tmp/tc   # seconds

For each shape of SHAPES and each S = R in --sizes (D = 4, T = 8): the construction's accuracy on each seed's
instance (its evaluation set, SPEC §11) and the best evaluation accuracy of Adam training (lr 0.03 and 0.1,
batch 128, --max-steps steps, the seed's own initialization; the best over both rates), on the same
instances. Writes constructions.json (settings, rows, seconds, machine) into --out and prints a markdown table.
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

SHAPES = {  # label: (d, H, d_h, m); the same parameter count 4·H·d_h·d + 2·m·d is not the point: each is a size
    "attention only (d=32, H=8, d_h=4)": (32, 8, 4, 0),
    "attention + MLP (d=32, H=4, d_h=8, m=64)": (32, 4, 8, 64),
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 12, 16, 24, 32],
                   help="S = R values (default 4 8 12 16 24 32)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="default 0 1 2")
    p.add_argument("--max-steps", type=int, default=2048, help="Adam steps of the trained models (default 2048)")
    p.add_argument("--out", required=True, help="folder for constructions.json (created if missing)")
    a = p.parse_args(argv)
    import torch

    from dynamics.capacity_training import TransformerTrainConfig, train_transformers
    from models.transformer import TransformerConfig, transformer_parameter_count
    from models.transformer.construction import construction_accuracy

    torch.set_num_threads(1)
    lrs = [3e-2, 1e-1]
    train = TransformerTrainConfig(batch=128, max_steps=a.max_steps, eval_every=32, record=False)
    rows, start = [], time.perf_counter()
    for label, (d, H, dh, m) in SHAPES.items():
        for S in a.sizes:
            configs = [TransformerConfig(S=S, R=S, D=4, d=d, H=H, d_h=dh, m=m, T=8, seed=s) for s in a.seeds]
            built = [construction_accuracy(c) for c in configs]
            run = train_transformers([c for c in configs for _ in lrs], lrs * len(configs), train)
            trained = run.best_accuracy.reshape(len(configs), len(lrs)).max(axis=1)
            rows.append(dict(shape=label, d=d, H=H, d_h=dh, m=m, params=transformer_parameter_count(d, H, dh, m),
                             S=S, R=S, D=4, facts=S * S, seeds=list(a.seeds), construction=built,
                             trained=[float(x) for x in trained]))
            print(f"{label} S=R={S} ({S * S} facts): construction {np.round(built, 3).tolist()}, trained "
                  f"{np.round(trained, 3).tolist()} ({time.perf_counter() - start:.0f} s)", flush=True)
    os.makedirs(a.out, exist_ok=True)
    write_json(os.path.join(a.out, "constructions.json"),
               dict(settings=dict(sizes=a.sizes, seeds=a.seeds, max_steps=a.max_steps, lrs=lrs, batch=128, T=8, D=4),
                    rows=rows, seconds=time.perf_counter() - start,
                    machine=f"os.cpu_count()={os.cpu_count()} {platform.processor() or platform.machine()}",
                    load=[round(x, 2) for x in os.getloadavg()]))
    print("\n| shape | S = R | facts | construction, per seed | trained (best accuracy), per seed |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['S']} | {r['facts']} | {', '.join(f'{x:.3f}' for x in r['construction'])} | "
              f"{', '.join(f'{x:.3f}' for x in r['trained'])} |")


if __name__ == "__main__":
    main()
