"""How accurate is a stage switch? A two-stage experiment (warm-up on the first quarter of the subjects until
their loss reaches eps, then all subjects) at a given rtol against the same experiment at rtol 1e-12.

    python bench/stage_switch.py                        # S16/R4/D8, rtol 1e-9 (the default) and 1e-11
    python bench/stage_switch.py --S 64 --rtol 1e-7 1e-9

Prints, per rtol: the warm-up's end time and its error (absolute and relative to the reference), the second
stage's end time and its error, and the largest error of the loss on all facts over 200 times spread over
the second stage (each read from the runs' dense output). docs/numerics.md quotes these numbers. Writes
nothing.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dynamics import ExperimentConfig, FlowConfig, Stage, Stop, run_experiment  # noqa: E402
from models import Distribution, TaskConfig  # noqa: E402

REFERENCE_RTOL = 1e-12


def two_stage(S: int, R: int, D: int, rtol: float, eps: float) -> object:
    """The two-stage run at ``rtol``: warm-up on subjects 0..S/4-1 until their loss is eps, then all."""
    flow = FlowConfig(task=TaskConfig(S=S, R=R, D=D, facts="balanced", seed=0), alpha=1e-5, rtol=rtol, t_max=1e7)
    stages = (Stage("warmup", Distribution(subjects=f"0:{S // 4}"), Stop(loss=eps)),
              Stage("all", Distribution(), Stop(loss=eps)))
    return run_experiment(ExperimentConfig(flow=flow, stages=stages, eval_sets=("all", "train")), progress=False)


def all_loss(run, t: float) -> float:
    return float(run.metrics_at(t)["all"]["loss"])


def compare(run, ref, points: int = 200) -> dict:
    """Errors of ``run`` against ``ref``: stage end times and the loss on all facts over the second stage."""
    (w, a), (w_ref, a_ref) = run.stages, ref.stages
    ts = np.linspace(max(a.t_start, a_ref.t_start), min(a.t_end, a_ref.t_end), points)
    loss_err = max(abs(all_loss(run, t) - all_loss(ref, t)) for t in ts)
    return dict(warmup_end=w.t_end, warmup_abs=abs(w.t_end - w_ref.t_end),
                warmup_rel=abs(w.t_end - w_ref.t_end) / w_ref.t_end,
                end=a.t_end, end_abs=abs(a.t_end - a_ref.t_end), end_rel=abs(a.t_end - a_ref.t_end) / a_ref.t_end,
                loss_err=loss_err)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--S", type=int, default=16, help="subjects, a multiple of 4 and of D (default 16)")
    p.add_argument("--R", type=int, default=4, help="relations (default 4)")
    p.add_argument("--D", type=int, default=8, help="answers per relation (default 8)")
    p.add_argument("--eps", type=float, default=1e-2, help="loss at which each stage stops (default 1e-2)")
    p.add_argument("--rtol", type=float, nargs="+", default=[1e-9, 1e-11], help="tolerances to measure "
                   "(default 1e-9 1e-11)")
    a = p.parse_args(argv)
    ref = two_stage(a.S, a.R, a.D, REFERENCE_RTOL, a.eps)
    print(f"S{a.S}/R{a.R}/D{a.D}, eps {a.eps:g}, reference rtol {REFERENCE_RTOL:g}: warm-up ends at "
          f"{ref.stages[0].t_end:.12g}, the second stage at {ref.stages[1].t_end:.12g}")
    print("| rtol | warm-up end error (abs, rel) | second-stage end error (abs, rel) | max loss error after the switch |")
    print("| --- | --- | --- | --- |")
    for rtol in a.rtol:
        c = compare(two_stage(a.S, a.R, a.D, rtol, a.eps), ref)
        print(f"| {rtol:g} | {c['warmup_abs']:.2g}, {c['warmup_rel']:.2g} | {c['end_abs']:.2g}, {c['end_rel']:.2g} "
              f"| {c['loss_err']:.2g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
