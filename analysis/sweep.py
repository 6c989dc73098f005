"""Command line: phase times over grids of (S, R, D, T, N, alpha), reduced system in batches, full system otherwise.

    python -m analysis.sweep --S 16 32 64 128 --R 4 --D 8 --alpha-range 1e-6 1e-2 9 --out runs/sweep

Configurations the reduction covers (equal subject counts per answer, uniform frequencies) are solved all
at once by the exact quadrature of the reduced flow (analysis.theory.reduced_solution.phase_times: each
configuration stops at its own t3). The others go through the full system (analysis.analyze_flow) one by one, with a
progress bar; with --batch-flows B (B >= 2) up to B of them of one shape (S, R, D, T, N) are integrated together
by dynamics.flow.batched.run_flows_batched (phase times and plateau_loss, no trajectory; column batched = 1).
Writes sweep.csv (one row per configuration), slopes.json (fitted and predicted slopes of
t1, t2, t3 and t2 - t1 against log(1/alpha) and against S) and figures. The sweep itself is the library's
(analysis.sweeps.phase_sweep.run_sweep); this module parses the flags, checks the grid, calls it and prints.
"""
from __future__ import annotations

import sys

import numpy as np

from common.cli import EXIT_OK, ArgumentParser, Program, add_overwrite, program_name, run_program
from common.errors import ConfigError, check_choice, check_int, check_positive
from models.task import MAX_SEED, MAX_SIZE

from analysis.sweeps.phase_sweep import (MAX_BATCH_FLOWS, MAX_CONFIGS, check_full_runs, check_grid_size,
                                         run_sweep)

FACTS = ("structured", "balanced", "random")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=program_name("analysis.sweep"),
                       description="Phase times t1, t2, t3 of the linear-attention model's gradient flow over a grid "
                                   "of sizes and initialization scales: reduced system (exact quadrature, batched) "
                                   "where the symmetry reduction applies, full system otherwise. Writes sweep.csv, "
                                   "slopes.json and figures into --out.")
    p.add_argument("--S", type=int, nargs="+", default=[16, 32, 64, 128], help="subject counts (default 16 32 64 128)")
    p.add_argument("--R", type=int, nargs="+", default=[4], help="relation counts (default 4)")
    p.add_argument("--D", type=int, nargs="+", default=[8], help="answers per relation (default 8)")
    p.add_argument("--T", type=int, nargs="+", default=[32],
                   help="sequence lengths (default 32; they do not enter the reduced flow, only full runs)")
    p.add_argument("--N", type=int, nargs="+", default=[20], help="noise token counts (default 20; as for --T)")
    p.add_argument("--alpha", type=float, nargs="+", default=None, help="initialization scales (list)")
    p.add_argument("--alpha-range", type=float, nargs=3, default=None, metavar=("LO", "HI", "COUNT"),
                   help="COUNT log-spaced scales from LO to HI (default 1e-6 1e-2 9 when --alpha is not given); "
                        "the whole grid may have at most 1,000,000 configurations")
    p.add_argument("--facts", default="structured", choices=FACTS,
                   help="fact table (default structured); random tables and D not dividing S use the full system")
    p.add_argument("--seed", type=int, default=0, help="seed of balanced/random tables (default 0)")
    p.add_argument("--zipf-subjects", type=float, nargs="+", default=[0.0], metavar="BETA",
                   help="subject Zipf exponents, p(s) ~ (s+1)^-BETA (default 0; a list sweeps them; > 0 forces the "
                        "full system, with the leading-order escape schedule of analysis.theory.staircase as the "
                        "prediction beside it and a figure phase_times_zipf.png)")
    p.add_argument("--zipf-relations", type=float, nargs="+", default=[0.0], metavar="BETA",
                   help="relation Zipf exponents, q(r) ~ (r+1)^-BETA (default 0; as --zipf-subjects)")
    p.add_argument("--eps-conv", type=float, default=1e-2, help="loss level that defines t3 (default 1e-2)")
    p.add_argument("--full-rtol", type=float, default=None,
                   help="rtol of full-system runs, in [1e-14, 1e-3] (default: dynamics' 1e-9)")
    p.add_argument("--max-full", type=int, default=200,
                   help="refuse grids needing more than this many full-system runs (default 200)")
    p.add_argument("--batch-flows", type=int, default=0, metavar="B",
                   help="full-system runs: 0 or 1 (default 0) integrates one run at a time, with its trajectory "
                        "and plateau (plateau_loss); B >= 2 integrates up to B flows of one shape (S, R, D, T, N) "
                        f"together as one batched state, a waiting run taking the place of each that finishes "
                        f"(dynamics.flow.batched.run_flows_batched with slots = B; B at most "
                        f"{MAX_BATCH_FLOWS:,}): the same steps, phase times and plateau_loss, in less time "
                        "(column batched = 1); runs the batched solver cannot take (states of ROCK4 size) still "
                        "go one at a time")
    p.add_argument("--out", default="runs/sweep", metavar="DIR",
                   help="output folder, created as a whole (default runs/sweep); an existing non-empty folder "
                        "is refused unless --overwrite")
    add_overwrite(p)
    p.add_argument("--no-plots", action="store_true", help="skip the figures")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    return p


def grid_from_args(a) -> dict:
    """Validated grid columns (arrays of equal length) from parsed arguments."""
    if a.alpha is not None and a.alpha_range is not None:
        raise ConfigError("give either --alpha or --alpha-range, not both")
    if a.alpha is not None:
        alphas = [check_positive("alpha", x) for x in a.alpha]
    else:
        lo, hi, n = a.alpha_range if a.alpha_range is not None else (1e-6, 1e-2, 9)
        lo, hi = check_positive("alpha-range LO", lo), check_positive("alpha-range HI", hi)
        n = check_int("alpha-range COUNT", n, 1, MAX_CONFIGS)
        if hi < lo:
            raise ConfigError(f"alpha-range HI = {hi:g} is below LO = {lo:g}")
        check_grid_size(n * len(a.S) * len(a.R) * len(a.D) * len(a.T) * len(a.N))  # before building anything
        alphas = list(np.geomspace(lo, hi, n))
    for a_ in alphas:
        if a_ >= 1:
            raise ConfigError(f"alpha = {a_:g} is not small; the phase structure needs alpha < 1")
    S = [check_int("S", x, 1, MAX_SIZE) for x in a.S]
    R = [check_int("R", x, 1, MAX_SIZE) for x in a.R]
    D = [check_int("D", x, 1, MAX_SIZE) for x in a.D]
    T = [check_int("T", x, 3, MAX_SIZE) for x in a.T]
    N = [check_int("N", x, 1, MAX_SIZE) for x in a.N]
    check_int("seed", a.seed, 0, MAX_SEED)
    check_int("max_full", a.max_full, 0)
    check_int("batch-flows", a.batch_flows, 0, MAX_BATCH_FLOWS)
    check_choice("facts", a.facts, FACTS)
    check_positive("eps_conv", a.eps_conv)
    zs = [check_positive("zipf_subjects", x, allow_zero=True) for x in a.zipf_subjects]
    zr = [check_positive("zipf_relations", x, allow_zero=True) for x in a.zipf_relations]
    check_grid_size(len(S) * len(R) * len(D) * len(T) * len(N) * len(alphas) * len(zs) * len(zr))
    # the rows of itertools.product(S, R, D, T, N, alphas, zipf exponents), built as arrays (no tuple per row)
    grids = np.meshgrid(np.array(S), np.array(R), np.array(D), np.array(T), np.array(N),
                        np.array(alphas, dtype=np.float64), np.array(zs, dtype=np.float64),
                        np.array(zr, dtype=np.float64), indexing="ij")
    return {k: g.reshape(-1) for k, g in zip(("S", "R", "D", "T", "N", "alpha", "zipf_subjects", "zipf_relations"),
                                             grids)}


def _varies_zipf(cols) -> bool:
    return any(np.unique(cols[k]).size > 1 for k in ("zipf_subjects", "zipf_relations") if k in cols)


def run(a, job) -> int:
    """Check the grid and every full-system run, claim --out, sweep (analysis.sweeps.phase_sweep), write, print."""
    cols = grid_from_args(a)
    if a.full_rtol is not None:  # the flow's documented range (dynamics.ode.tolerances.RTOL_RANGE), up front
        from dynamics.ode.tolerances import check_rtol

        check_rtol("full_rtol", a.full_rtol)
    job.claim(a.out)  # before any computation
    check_full_runs(cols, facts=a.facts, seed=a.seed, eps_conv=a.eps_conv, full_rtol=a.full_rtol,
                    max_full=a.max_full)
    result = run_sweep(cols, facts=a.facts, seed=a.seed, eps_conv=a.eps_conv,
                       full_rtol=a.full_rtol, progress=None if not a.quiet else False, max_full=a.max_full,
                       batch_flows=a.batch_flows)
    result.save(a.out, plots=not a.no_plots, overwrite=a.overwrite)
    out_cols, sl = result.columns, result.slopes
    if not a.quiet:
        print(f"{out_cols['S'].size} configurations: {result.n_reduced} reduced in "
              f"{result.reduced_seconds:.3f} s, {result.n_full} full in {result.full_seconds:.1f} s")
        for s in sl:
            where = (f"S={s['S']} R={s['R']} D={s['D']}" if s["against"] != "S"
                     else f"R={s['R']} D={s['D']} alpha={s['alpha']:.3g}")
            fit = "n/a" if s["fitted"] is None else f"{s['fitted']:.6g}"
            print(f"  d {s['quantity']} / d {s['against']} [{where}]: fitted {fit}, predicted {s['predicted']:.6g}")
        figs = ", phase_times_alpha.png, phase_times_S.png" + (
            ", phase_times_zipf.png" if _varies_zipf(out_cols) else "")
        print(f"wrote {a.out}/sweep.csv, slopes.json" + ("" if a.no_plots else figs))
    unfinished = int((out_cols["finished"] == 0).sum())
    if unfinished:  # ran but did not finish: results written, exit 3
        return job.unfinished(f"{unfinished} full-system run(s) ran out of steps or failed (column finished = 0 "
                              f"in {a.out}/sweep.csv; their phase times are missing or partial)")
    return EXIT_OK


PROGRAM = Program(module=__name__, build_parser=build_parser, run=run)


def main(argv=None) -> int:
    return run_program(PROGRAM, argv)


if __name__ == "__main__":
    sys.exit(main())
