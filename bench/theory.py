"""Numbers of the README's section "Beyond uniform data": rates against a finite-difference Jacobian, a Zipf
staircase, the hallucination criterion on both sides, and the symmetry-reduced flow against the full flow.

    python bench/theory.py            # prints markdown tables (about 2 minutes on 2 cores)
    python bench/theory.py --quick    # skips the large reduced-vs-full timing
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from analysis.theory.escape import jacobian_rates, predicted_spectrum  # noqa: E402
from analysis.theory.hallucination import hallucination  # noqa: E402
from analysis.theory.lumped import find_classes, run_lumped  # noqa: E402
from analysis.theory.staircase import staircase  # noqa: E402
from dynamics import FlowConfig, run_flow  # noqa: E402
from models.task import TaskConfig, make_task  # noqa: E402


def rates_table():
    print("| configuration | positive eigenvalues | max relative difference |")
    print("|---|---|---|")
    rng = np.random.default_rng(7)
    a = np.stack([np.where(np.arange(9) < 6, 0, 1 + np.arange(9) % 3), 4 + np.arange(9) % 2,
                  8 + rng.integers(0, 4, 9)], axis=1)
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "frd_unbalanced.npy")
    np.save(path, a)
    cases = {"Zipf subjects 1.0, S8/R3/D4": TaskConfig(S=8, R=3, D=4, zipf_subjects=1.0),
             "Zipf relations 0.7, S8/R3/D4": TaskConfig(S=8, R=3, D=4, zipf_relations=0.7),
             "both (1.0, 0.5), S8/R3/D4, T10/N5": TaskConfig(S=8, R=3, D=4, zipf_subjects=1.0, zipf_relations=0.5,
                                                             T=10, N=5),
             "random table, S10/R3/D4": TaskConfig(S=10, R=3, D=4, facts="random", seed=3),
             "unbalanced user table, S9/R3/D4": TaskConfig(S=9, R=3, D=4, facts="file", facts_file=path)}
    for name, cfg in cases.items():
        task = make_task(cfg)
        f, p = jacobian_rates(task), predicted_spectrum(task)
        print(f"| {name} | {len(f)} | {np.max(np.abs(f - p) / p):.1e} |")


def staircase_table(cfg, alpha):
    task = make_task(cfg)
    sc = staircase(task, alpha=alpha)
    print(f"\nStaircase of {cfg.S}/{cfg.R}/{cfg.D}, zipf_subjects={cfg.zipf_subjects:g}, "
          f"zipf_relations={cfg.zipf_relations:g}, alpha={alpha:g} (t_end by {sc.exact_method}):\n")
    print("| level | t_end | t_end leading order | rel. error | ends with the escape of | e-folds |")
    print("|---|---|---|---|---|---|")
    for lv, e in zip(sc.levels, sc.leading_errors()):
        g = (lambda x, f=".6g": "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, f))
        print(f"| {lv.level:.4f} | {g(lv.t_end)} | {g(lv.t_end_leading)} | {g(e, '+.3f')} | "
              f"{' '.join(lv.escaping) or '—'} | {g(lv.efolds, '.3g')} |")


def hallucination_table():
    cases = [(TaskConfig(S=8, R=7, D=8), 1e-5), (TaskConfig(S=8, R=7, D=8), 1e-20), (TaskConfig(S=16, R=4, D=8), 1e-5),
             (TaskConfig(S=8, R=8, D=8), 1e-5), (TaskConfig(S=16, R=4, D=8, zipf_relations=1.0), 1e-5),
             (TaskConfig(S=12, R=3, D=4, facts="random", seed=1), 1e-8),
             (TaskConfig(S=8, R=8, D=4, zipf_relations=1.0), 1e-5)]
    print("\n| configuration | alpha | old condition | predicted (method) | leading order | measured on the full "
          "flow | d/H | duration | relation-only loss at the band exit |")
    print("|---|---|---|---|---|---|---|---|---|")
    from analysis.theory.modes import hallucination_stage_exists

    for cfg, alpha in cases:
        task = make_task(cfg)
        pred = hallucination(task, alpha=alpha)
        meas = hallucination(task, alpha=alpha, flow_config=FlowConfig(task=cfg, alpha=alpha))
        old = bool(hallucination_stage_exists(cfg.S, cfg.R, cfg.D))
        extra = ("" if not (cfg.zipf_subjects or cfg.zipf_relations) else
                 f", zipf_rel {cfg.zipf_relations:g}") + ("" if cfg.facts == "structured" else f", {cfg.facts}")
        print(f"| S{cfg.S}/R{cfg.R}/D{cfg.D}{extra} | {alpha:g} | {old} | {pred['visible']} ({pred['method']}) | "
              f"{pred['leading_order']['visible']} | {meas['visible']} | {meas['distance']:.3f} | "
              f"{meas['duration']:.4g} | {meas['relation_loss']:.4f} |")


def lumped_timing(cfg, alpha=1e-5):
    task = make_task(cfg)
    levels = (0.5 * (math.log(task.num_answers) + task.entropy_given_relation()), 0.5 * task.entropy_given_relation(),
              0.05)
    t0 = time.perf_counter()
    sol, _ = run_lumped(task, alpha=alpha, levels=levels, rtol=1e-9)
    t_red = time.perf_counter() - t0
    t0 = time.perf_counter()
    run = run_flow(FlowConfig(task=cfg, alpha=alpha, loss_target=0.025), levels=levels)
    t_full = time.perf_counter() - t0
    diff = max(abs(a - run.crossings[lv]) / run.crossings[lv] for a, lv in zip(sol.events["loss"], levels))
    cs, cr = find_classes(task).sizes
    print(f"\n| S{cfg.S}/R{cfg.R}/D{cfg.D}, zipf_subjects {cfg.zipf_subjects:g} | classes {cs} x {cr} | reduced "
          f"{t_red:.1f} s ({sol.stats['nfe']} RHS) | full {t_full:.1f} s ({run.solver['nfe']} RHS, "
          f"{run.solver['method']}) | crossings agree to {diff:.1e} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the large reduced-vs-full timing")
    a = ap.parse_args()
    rates_table()
    staircase_table(TaskConfig(S=16, R=4, D=8, zipf_subjects=1.0), 1e-8)
    staircase_table(TaskConfig(S=16, R=4, D=8, zipf_relations=1.0), 1e-8)
    hallucination_table()
    if not a.quick:
        lumped_timing(TaskConfig(S=256, R=16, D=16, zipf_subjects=1.0))


if __name__ == "__main__":
    main()
