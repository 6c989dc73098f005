"""Full-batch GD of model 1 against the exact flow: flow_gap = max_k |L_GD(k) - L_flow(k * lr)| at three step
sizes (the README's line "Full-batch GD vs the flow"). Same settings as the README's command
``python -m models.train --model linear --optimizer gd --init balanced --lr 0.5 --steps 2400 --compare-flow``
(S16/R4/D8, balanced init 1e-5), with the steps scaled so that every run covers flow time 1200, evaluated at
every step by default (the largest gap sits near t1, where the loss falls fastest; sparser evaluations miss it).

    python bench/gd_gap.py

Prints one line per lr and the README line; writes nothing.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eval-every", type=int, default=1,
                   help="evaluate (and pair with the flow) every this many steps (default 1: the true maximum)")
    a = p.parse_args(argv)
    from analysis import flow_gap
    from dynamics import TrainConfig, train
    from models.task import TaskConfig

    gaps = []
    for lr in (1.0, 0.5, 0.25):
        cfg = TrainConfig(task=TaskConfig(S=16, R=4, D=8), model="linear", optimizer="gd", init="balanced",
                          init_scale=1e-5, lr=lr, steps=round(1200 / lr), eval_every=a.eval_every)
        g = flow_gap(train(cfg, progress=False))
        gaps.append(g["flow_gap"])
        print(f"lr {lr:g}: flow_gap {g['flow_gap']:.4f} at step {g['at_step']} (flow time {g['at_flow_time']:.4g})")
    print("* Full-batch GD vs the flow: " + " / ".join(f"{x:.3f}" for x in gaps) + " at lr 1 / 0.5 / 0.25")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
