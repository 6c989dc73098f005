"""Command line: integrate the exact flow, check the conservation laws, print and plot the phases.

    python -m dynamics.run --S 16 --R 4 --D 8 --out runs/s16
"""
from __future__ import annotations

import sys

from common.cli import EXIT_OK, ArgumentParser, Program, add_overwrite, default_out, program_name, run_program
from models.task import FACT_KINDS, TaskConfig

# torch-free: the parser is built and the arguments parsed (--help, --version, errors) before torch loads
from dynamics.choices import BACKENDS, INITS, SCIPY_METHODS, TORCHDIFFEQ_METHODS


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=program_name("dynamics.run"),
                       description="Exact population gradient flow of the linear-attention model (SPEC §2) from "
                                   "a small initialization: integrates the ODE, monitors the conservation laws, "
                                   "finds the phase times t1, t2, t3 and the hallucination plateau, and writes "
                                   "results.json, trajectory.csv and figures into --out.")
    g = p.add_argument_group("task (SPEC §1)")
    g.add_argument("--S", type=int, default=16, help="number of subjects (default 16)")
    g.add_argument("--R", type=int, default=4, help="number of relations (default 4)")
    g.add_argument("--D", type=int, default=8, help="answers per relation; |A| = R*D (default 8)")
    g.add_argument("--T", type=int, default=32, help="sequence length, >= 3 (default 32)")
    g.add_argument("--N", type=int, default=20, help="number of noise tokens (default 20)")
    g.add_argument("--facts", default="structured", choices=FACT_KINDS[:3],
                   help="fact table: structured (subject j answers floor(j*D/S) + r*D), balanced (random, "
                        "each answer held by S/D subjects; needs D | S) or random (uniform) (default structured)")
    g.add_argument("--facts-file", default=None, metavar="PATH",
                   help="user fact table: .npy or header-less .csv, S x R global answer indices (overrides --facts)")
    g.add_argument("--zipf-subjects", type=float, default=0.0, metavar="BETA",
                   help="subject frequencies p(s) ~ (s+1)^-BETA (default 0: uniform)")
    g.add_argument("--zipf-relations", type=float, default=0.0, metavar="BETA",
                   help="relation frequencies q(r) ~ (r+1)^-BETA (default 0: uniform)")
    g.add_argument("--seed", type=int, default=0, help="seed of the balanced/random fact table (default 0)")
    g = p.add_argument_group("initialization")
    g.add_argument("--init", default="balanced", choices=INITS[:2],
                   help="balanced: K = alpha, W = alpha/sqrt|A| (conserved Q = 0); uniform: every entry alpha "
                        "(default balanced)")
    g.add_argument("--alpha", type=float, default=1e-5, help="initialization scale (default 1e-5)")
    g.add_argument("--init-file", default=None, metavar="NPZ",
                   help=".npz with arrays W (|A|, |V|) and K (|V|,); noise columns must be identical")
    g = p.add_argument_group("integration")
    g.add_argument("--t-max", type=float, default=1e7, help="stop at this flow time (default 1e7)")
    g.add_argument("--loss-target", type=float, default=None,
                   help="stop once the loss reaches this value (default: --eps-conv)")
    g.add_argument("--eps-conv", type=float, default=1e-2, help="loss level that defines t3 (default 1e-2)")
    g.add_argument("--backend", default="native", choices=BACKENDS,
                   help="ODE integrator: native (default: Dormand-Prince 5(4) with stages stored row-wise, "
                        "the fastest here), torchdiffeq or scipy (independent implementations for cross-checks)")
    g.add_argument("--method", default=None,
                   help=f"solver: native {{dopri5, rock4}} (default dopri5 below 500,000 parameters, rock4 from "
                        f"there: the stabilized explicit ROCK4 is cheaper on the stiff plateaus of large flows); "
                        f"torchdiffeq {{{', '.join(TORCHDIFFEQ_METHODS)}}} "
                        f"(default dopri5); scipy {{{', '.join(SCIPY_METHODS)}}} (default DOP853)")
    g.add_argument("--rtol", type=float, default=None,
                   help="relative tolerance (default 1e-9 in float64, 1e-5 in float32); allowed 1e-14 to 1e-3 "
                        "in float64, 1e-7 to 1e-3 in float32 (smaller: the dtype cannot deliver it; larger: the "
                        "phase times are meaningless)")
    g.add_argument("--atol", type=float, default=None,
                   help="absolute tolerance, > 0 and at most rtol * smallest initial |entry| (larger cannot resolve the escape "
                        "from alpha; docs/numerics.md) (default: 1e-3 * rtol * smallest initial |entry|)")
    g.add_argument("--dtype", default="float64", choices=("float64", "float32"), help="default float64")
    g.add_argument("--device", default="cpu", help="torch device for the flow (default cpu)")
    g.add_argument("--mode", default="full", choices=("full", "reduced", "compare"),
                   help="full (default): the whole compressed system; reduced: the 10-parameter class-reduced "
                        "flow derived with sympy (analysis.theory.reduction; only for structured/balanced tables with "
                        "D | S, uniform frequencies and balanced/uniform init; orders of magnitude faster); "
                        "compare: both, with max |L_full - L_reduced| in results.json (compare.max_loss_diff)")
    g.add_argument("--max-steps", type=int, default=1_000_000,
                   help="budget of accepted solver steps (default 1000000: the default S=16 run takes ~400, "
                        "S=1024 ~1900, alpha=1e-300 ~18000); a run that exhausts it writes its results with "
                        "status max_steps and exits with status 3")
    g.add_argument("--samples-per-octave", type=int, default=32,
                   help="saved points per doubling of t (default 32; plus 16 linear points at the start)")
    g = p.add_argument_group("output")
    g.add_argument("--out", default=None, metavar="DIR",
                   help="output folder, created as a whole when the run succeeds (default "
                        "runs/flow-S{S}-R{R}-D{D} plus every result-changing setting that differs from its "
                        "default, e.g. runs/flow-S16-R4-D8-compare-rtol1e-10); an existing non-empty folder "
                        "is refused unless --overwrite")
    add_overwrite(g)
    g.add_argument("--no-plots", action="store_true", help="skip loss.png, loss.pdf and invariant.png")
    g.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    return p


# labels of the settings in the default output folder's name ("" = the value alone, as in -reduced)
OUT_LABELS = dict(mode="", facts="", facts_file="facts", zipf_subjects="zipf", zipf_relations="zipfrel", init="",
                  init_file="init", t_max="tmax", loss_target="target", eps_conv="eps", backend="", method="",
                  dtype="", device="", max_steps="maxsteps", samples_per_octave="spo")


def default_out_dir(args, parser=None) -> str:
    """runs/flow-S{S}-R{R}-D{D} plus ``-<setting>`` for every result-changing option not at its default."""
    return default_out(f"runs/flow-S{args.S}-R{args.R}-D{args.D}", parser or build_parser(), args,
                       skip=("S", "R", "D"), labels=OUT_LABELS, first=("mode",))


def config_from_args(a):
    """The dynamics.FlowConfig of parsed arguments (ConfigError if invalid)."""
    from dynamics.flow.config import FlowConfig

    task = TaskConfig(S=a.S, R=a.R, D=a.D, T=a.T, N=a.N,
                      facts="file" if a.facts_file else a.facts, facts_file=a.facts_file,
                      zipf_subjects=a.zipf_subjects, zipf_relations=a.zipf_relations, seed=a.seed)
    return FlowConfig(task=task, init="file" if a.init_file else a.init, alpha=a.alpha, init_file=a.init_file,
                      t_max=a.t_max, eps_conv=a.eps_conv, loss_target=a.loss_target, backend=a.backend,
                      method=a.method, rtol=a.rtol, atol=a.atol, dtype=a.dtype, device=a.device,
                      samples_per_octave=a.samples_per_octave, max_steps=a.max_steps)


def summary(result) -> str:
    c, ph, th, s = result.config, result.phases, result.theory, result.solver
    t = c.task

    def fmt(x):
        return "not reached" if x is None else f"{x:.6g}"

    lines = [
        f"task   S={t.S} R={t.R} D={t.D} T={t.T} N={t.N} facts={t.facts} |A|={t.R * t.D} "
        f"params={c.state_size():,}",
        f"init   {c.init} alpha={c.alpha:g}; solver {s['backend']}/{s['method']} rtol={s['rtol']:.1e} "
        f"atol={s['atol']:.1e} {c.dtype} on {c.device}",
        f"phases t1={fmt(ph.t1)}  t2={fmt(ph.t2)}  t3={fmt(ph.t3)}   (status: {result.status}, "
        f"t_end={result.trajectory['t'][-1]:.6g})",
    ]
    if ph.plateau is not None:
        p = ph.plateau
        lines.append(f"plateau at t={p.t:.6g}: L={p.loss:.6f} (log|A|={th['log_A']:.6f}, H(A|R)={th['H_A_given_R']:.6f})"
                     f"  relation-only={p.relation_loss:.4g} subject-only={p.subject_loss:.4g} "
                     f"hallucination gap={p.hallucination_gap:.4g}")
    else:
        lines.append(f"plateau: not found (needs t1 and t2); log|A|={th['log_A']:.6f} H(A|R)={th['H_A_given_R']:.6f}")
    lines.append("conservation max drift: " + ", ".join(f"{k}={v:.2e}" for k, v in result.conservation.items()))
    lines.append(f"solver {s['n_steps']} steps, {s['n_rejected'] if s['n_rejected'] is not None else 'n/a'} rejected, "
                 f"{s['nfe']} RHS evaluations, {s['saved_points']} saved points; integration "
                 f"{result.integration_seconds:.3f} s, wall {result.wall_seconds:.3f} s")
    return "\n".join(lines)


def run(args, job) -> int:
    """Check the configuration, claim --out, integrate (analysis.theory.reduced_flow.run_mode), write and print."""
    config = config_from_args(args)
    from analysis.theory.reduced_flow import check_reduced_memory, run_mode

    if args.mode == "reduced":  # 10 class parameters: the full system's estimate does not apply
        check_reduced_memory(config)
    else:
        config.check_memory()
    config.check_reachable(noise=args.mode != "reduced")  # loss target, t_max and T within what the flow can reach (dynamics.flow.reach)
    out = job.claim(args.out or default_out_dir(args, job.parser))  # before any computation

    # progress: a bar on a terminal, elsewhere one line on stderr every ~30 s (dynamics.flow.solve.FlowProgress)
    result = run_mode(args.mode, config, progress=not args.quiet)
    result.save(out, plots=not args.no_plots, overwrite=args.overwrite)
    if not args.quiet:
        print(summary(result))
        if getattr(result, "compare", None):
            print(f"compare: max |L_full - L_reduced| = {result.compare['max_loss_diff']:.3e} over "
                  f"{result.compare['points']} saved times")
        print(f"wrote {out}/results.json, trajectory.csv" + ("" if args.no_plots else ", loss.png, loss.pdf, invariant.png"))
    if result.status in ("max_steps", "failed"):  # ran but did not finish: results written, exit 3
        reason = result.message or result.status
        hint = (" (raise --max-steps, or loosen --rtol within its range)" if result.status == "max_steps"
                else "")
        return job.unfinished(f"the flow did not finish ({result.status}): {reason}{hint}; the results up to "
                              f"there are in {out}")
    return EXIT_OK


PROGRAM = Program(module=__name__, build_parser=build_parser, run=run, native=("torch",))


def main(argv=None) -> int:
    return run_program(PROGRAM, argv)


if __name__ == "__main__":
    sys.exit(main())
