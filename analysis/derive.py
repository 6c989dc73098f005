"""Command line: the symbolic reduction and its predictions for one (S, R, D, alpha).

    python -m analysis.derive --S 16 --R 4 --D 8 --alpha 1e-5 --out runs/derive-s16

Prints the reduced equations, every conserved quantity (each proven: its time derivative simplifies
to 0), the escape rates, the hallucination condition and the predicted t1, t2, t3; writes
derivation.json and derivation.md (equations in LaTeX) into --out. The derivation itself is the library's
(analysis.theory.derivation.derive_reduction); this module parses the flags, calls it and prints.
"""
from __future__ import annotations

import sys

from common.cli import EXIT_OK, ArgumentParser, Program, add_overwrite, program_name, run_program
from common.errors import check_int
from models.task import MAX_SIZE

from analysis.theory.cost import MAX_MINUTES, check_derive_cost
from analysis.theory.derivation import derive_reduction


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=program_name("analysis.derive"),
                       description="Derive with sympy the class-reduced gradient flow of the linear-attention model "
                                   "(structured/balanced tables with D | S, uniform frequencies, balanced or uniform "
                                   "init), prove its conservation laws, and predict escape rates, plateaus and the "
                                   "phase times t1, t2, t3 for the given sizes and alpha.")
    p.add_argument("--S", type=int, default=16, help="number of subjects; D must divide S (default 16)")
    p.add_argument("--R", type=int, default=4, help="number of relations (default 4)")
    p.add_argument("--D", type=int, default=8, help="answers per relation (default 8)")
    p.add_argument("--T", type=int, default=32,
                   help="sequence length, >= 3 (default 32). The class reduction (uniform frequencies on a "
                        "structured or balanced table) does not depend on it: T and N drop out of its loss (proven). "
                        "Elsewhere (Zipf frequencies, random or file tables) the per-token rates, staircase and "
                        "hallucination stage do depend on T and N (through the noise and EOS tokens)")
    p.add_argument("--N", type=int, default=20,
                   help="number of noise tokens (default 20); matters exactly when --T does (see --T)")
    p.add_argument("--alpha", type=float, default=1e-5,
                   help="initialization scale: balanced K = alpha, W = alpha/sqrt|A| (uniform init with every "
                        "entry alpha gives the same loss curve) (default 1e-5)")
    p.add_argument("--eps-conv", type=float, default=1e-2, help="loss level that defines t3 (default 1e-2)")
    g = p.add_argument_group("beyond uniform data (per-token rates, staircase, alpha-aware hallucination)")
    g.add_argument("--zipf-subjects", type=float, default=0.0, metavar="BETA",
                   help="subject frequencies p(s) ~ (s+1)^-BETA (default 0: uniform)")
    g.add_argument("--zipf-relations", type=float, default=0.0, metavar="BETA",
                   help="relation frequencies q(r) ~ (r+1)^-BETA (default 0: uniform)")
    g.add_argument("--facts", default="structured", choices=("structured", "balanced", "random"),
                   help="fact table when --facts-file is not given (default structured; balanced needs D | S)")
    g.add_argument("--facts-file", default=None, metavar="FILE",
                   help="a user fact table: .npy or header-less CSV of shape S x R, entry [s, r] the global "
                        "answer index of a*(s, r), inside relation r's block r*D .. r*D+D-1")
    g.add_argument("--seed", type=int, default=0, help="seed of balanced and random tables (default 0)")
    g.add_argument("--leading-only", action="store_true",
                   help="skip the exact integration behind the staircase's t_end and the hallucination stage "
                        "(the full flow, where the two-mode reduction does not apply) and report leading order only")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder for derivation.json and derivation.md, created as a whole (default "
                        "runs/derive-S{S}-R{R}-D{D} plus every setting that differs from its default, e.g. "
                        "runs/derive-S16-R4-D8-alpha1e-03); an existing non-empty folder is refused unless "
                        "--overwrite")
    p.add_argument("--max-minutes", type=float, default=MAX_MINUTES, metavar="M",
                   help="refuse (exit 2, with the estimate) a derivation estimated to take longer than this on the "
                        "2-core CPU the estimate was measured on (analysis.theory.cost; default %(default)g); one that "
                        "would not fit in the available memory is refused always")
    add_overwrite(p)
    p.add_argument("--quiet", action="store_true", help="print nothing")
    return p


def run(a, job) -> int:
    """Check the sizes, claim --out, derive (analysis.theory.derivation.derive_reduction), write and print."""
    S, R, D = (check_int(n, v, 1, MAX_SIZE) for n, v in (("S", a.S), ("R", a.R), ("D", a.D)))
    check_int("T", a.T, 3, MAX_SIZE)
    check_int("N", a.N, 1, MAX_SIZE)
    from models.task import TaskConfig

    task = TaskConfig(S=S, R=R, D=D, T=a.T, N=a.N, facts="file" if a.facts_file else a.facts,
                      facts_file=a.facts_file, zipf_subjects=a.zipf_subjects, zipf_relations=a.zipf_relations,
                      seed=a.seed)
    check_derive_cost(task, a.alpha, exact=not a.leading_only, max_minutes=a.max_minutes)  # before allocating
    out = job.claim(a.out or job.default_out(f"runs/derive-S{S}-R{R}-D{D}", skip=("S", "R", "D", "max_minutes"),
                                             labels=dict(eps_conv="eps")))  # before any computation
    result = derive_reduction(S, R, D, a.alpha, a.eps_conv, task=task, exact=not a.leading_only)
    result.save(out, overwrite=a.overwrite)
    pred, alg = result.predictions, result.algebra
    if not a.quiet and not pred["reduced"]:
        print(f"{pred['note']}.")
    if not a.quiet and pred["reduced"]:
        print("reduced equations (d p/dt, per real entry):")
        for k, v in alg["equations"].items():
            print(f"  d{k}/dt = {v}")
        print("loss splits:  L = " + " + ".join(alg["loss_split"]) + "  with a = k (w1 - w0), b = kappa (v1 - v0)")
        print("conserved quantities (d/dt simplifies to 0):")
        for k, v in alg["conserved"].items():
            print(f"  {k} = {v}   [d/dt = {alg['conserved_time_derivative'][k]}]")
        print("smallest system: da/dt = " + alg["margin_equations"][0] + ";  db/dt = " + alg["margin_equations"][1])
        print(f"rates: relation {pred['rates']['relation']:.6g} = {alg['rates']['relation']}, "
              f"subject {pred['rates']['subject']:.6g} = {alg['rates']['subject']}")
        print(f"hallucination condition S^2 (R-1) > R^2 (D-1): {pred['hallucination_condition_value']['lhs']} vs "
              f"{pred['hallucination_condition_value']['rhs']} -> stage "
              f"{'exists' if pred['hallucination_stage_exists'] else 'does not exist'}; intermediate plateau "
              f"{pred['plateaus']['intermediate_kind']} = {pred['plateaus']['intermediate']:.6f}")
        for i in (1, 2, 3):
            e = pred["leading_order_error"][f"t{i}"]
            t, l0 = pred["predicted"][f"t{i}"], pred["leading_order"][f"t{i}"]
            l1 = pred["leading_order_with_O1"][f"t{i}"]
            if not t or l0 is None or l1 is None:  # not reached (null) or reached at t = 0
                print(f"t{i} = {'not reached' if t is None else t}")
                continue
            print(f"t{i} = {t:.10g}  (leading log(1/alpha^2)/rate = {l0:.6g}, rel err {e['leading_rel']:.2e}; "
                  f"with O(1) term {l1:.6g}, rel err {e['leading_o1_rel']:.2e}; {e['mode']} mode)")
        print(f"proofs: {sum(alg['proofs'].values())}/{len(alg['proofs'])} identities simplify to 0")
    if not a.quiet and pred["general"] is not None:
        from analysis.theory.staircase import describe_modes

        gen = pred["general"]
        print(f"staircase (t_end by {gen['staircase_method']}; leading order beside):")
        for lv in gen["staircase"]:
            te = "-" if lv["t_end"] is None else f"{lv['t_end']:.6g}"
            tl = "-" if lv["t_end_leading"] is None else f"{lv['t_end_leading']:.6g}"
            print(f"  level {lv['level']:.6f}  t_end {te}  (leading {tl})  {describe_modes(lv['escaping'])}")
        h = pred["hallucination"]
        dur = h["duration"]
        print(f"hallucination stage at alpha={a.alpha:g}: {'visible' if h['visible'] else 'not visible'} "
              f"({h['method']}; duration {'-' if dur is None else format(dur, '.6g')}, relation-only loss "
              f"when the loss leaves the band "
              f"{'-' if h['relation_loss'] is None else format(h['relation_loss'], '.4g')}, H(A|R) "
              f"{h['H_A_given_R']:.6f})")
        print(f"wrote {out}/derivation.json, derivation.md")
    return EXIT_OK


PROGRAM = Program(module=__name__, build_parser=build_parser, run=run)


def main(argv=None) -> int:
    return run_program(PROGRAM, argv)


if __name__ == "__main__":
    sys.exit(main())
