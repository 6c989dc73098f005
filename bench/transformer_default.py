"""The transformer's frd-train defaults (docs/training.md, "The transformer"): on the default task (S16/R4/D8,
T 32, N 20, structured facts) Adam at lr 0.01, batch 1024, 2048 steps, one CPU thread, for embedding dimensions
``--d`` (default 64, the default, and 256, model 2's, at which the same run stalls): the first evaluated step with
accuracy 1 on the 8192 held-out sequences, the final loss and the wall time.

    python bench/transformer_default.py [--d 64 256]

Prints one line per d; writes nothing.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d", type=int, nargs="+", default=[64, 256], help="embedding dimensions (default 64 256)")
    p.add_argument("--steps", type=int, default=2048, help="Adam steps (default 2048, frd-train's for the "
                   "transformer)")
    a = p.parse_args(argv)
    import numpy as np
    import torch

    from dynamics import TrainConfig, train
    from models.task import TaskConfig
    from models.train import TRANSFORMER_DEFAULTS as X

    torch.set_num_threads(1)
    for d in a.d:
        cfg = TrainConfig(task=TaskConfig(), model="transformer", optimizer=X["optimizer"], lr=X["lr"],
                          steps=a.steps, d=d, H=X["H"], d_h=X["d_h"], m=X["m"], eval_every=64, device="cpu",
                          threads=1)
        t0 = time.perf_counter()
        run = train(cfg, progress=False)
        wall = time.perf_counter() - t0
        h = run.history
        hit = np.flatnonzero(h["accuracy"] >= 1.0)
        first = int(h["step"][hit[0]]) if hit.size else None
        print(f"d {d}, H {cfg.H}, d_h {cfg.d_h}, m {cfg.m}: accuracy 1 first at step {first}, final loss "
              f"{h['loss'][-1]:.4f}, final accuracy {h['accuracy'][-1]:.4f}; {wall:.1f} s wall "
              f"({run.steps_per_second:.0f} steps/s while training)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
