"""Command line: the symbolic reduction and its predictions for one (S, R, D, alpha).

    python -m analysis.derive --S 16 --R 4 --D 8 --alpha 1e-5 --out runs/derive-s16

Prints the reduced equations, every conserved quantity (each proven: its time derivative simplifies
to 0), the escape rates, the hallucination condition and the predicted t1, t2, t3; writes
derivation.json and derivation.md (equations in LaTeX) into --out.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field

from common.cli import ArgumentParser, add_overwrite, default_out, guarded, program_name
from common.errors import ConfigError, check_int, check_positive
from common.io import check_out
from models.task import MAX_SIZE


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=program_name("analysis.derive"),
                       description="Derive with sympy the class-reduced gradient flow of the linear-attention model "
                                   "(structured/balanced tables with D | S, uniform frequencies, balanced or uniform "
                                   "init), prove its conservation laws, and predict escape rates, plateaus and the "
                                   "phase times t1, t2, t3 for the given sizes and alpha.")
    p.add_argument("--S", type=int, default=16, help="number of subjects; D must divide S (default 16)")
    p.add_argument("--R", type=int, default=4, help="number of relations (default 4)")
    p.add_argument("--D", type=int, default=8, help="answers per relation (default 8)")
    p.add_argument("--T", type=int, default=32, help="sequence length, >= 3 (default 32; proven not to matter)")
    p.add_argument("--N", type=int, default=20, help="number of noise tokens (default 20; proven not to matter)")
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
    add_overwrite(p)
    p.add_argument("--quiet", action="store_true", help="print nothing")
    return p


def _f(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def predictions(S, R, D, alpha, eps_conv=1e-2) -> dict:
    """Numbers of the derivation for one configuration (the content of derivation.json minus the algebra)."""
    from analysis.theory.predict import escape_rates, hallucination_stage_exists, plateau, plateau_levels
    from analysis.theory.reduced_phases import phase_times  # null (not an error) where a phase does not exist (R or D = 1)

    r = escape_rates(S, R, D)
    pt = phase_times([S], [R], [D], [alpha], eps_conv)
    lv = plateau_levels(S, R, D)
    h = bool(hallucination_stage_exists(S, R, D))
    pred = {f"t{i}": _f(pt[f"t{i}"][0]) for i in (1, 2, 3)}
    lead = {f"t{i}": _f(pt[f"t{i}_leading"][0]) for i in (1, 2, 3)}
    lead1 = {f"t{i}": _f(pt[f"t{i}_leading_o1"][0]) for i in (1, 2, 3)}
    err = {}
    for i in (1, 2, 3):
        t = pred[f"t{i}"]
        err[f"t{i}"] = dict(
            leading_rel=None if not t or lead[f"t{i}"] is None else abs(lead[f"t{i}"] - t) / t,
            leading_o1_rel=None if not t or lead1[f"t{i}"] is None else abs(lead1[f"t{i}"] - t) / t,
            mode=str(pt[f"t{i}_mode"][0]))
    pl = None
    if pred["t1"] and pred["t2"] and pred["t2"] > pred["t1"] > 0:
        pl = plateau(S, R, D, alpha, pred["t1"], pred["t2"])
    lam_s, lam_r = float(r["subject"]), float(r["relation"])
    return {
        "config": dict(S=S, R=R, D=D, alpha=alpha, eps_conv=eps_conv),
        "rates": {"relation": lam_r, "subject": lam_s, "relation_eigen": float(r["relation_eigen"]),
                  "subject_eigen": float(r["subject_eigen"]),
                  "note": "rates of the margins (logit gaps) at the origin = 2 x the eigenvalues of the "
                          "linearized class flow"},
        "hallucination_stage_exists": h,
        "hallucination_condition": "S^2 (R-1) > R^2 (D-1)  (relation mode escapes first)",
        "hallucination_condition_value": dict(lhs=S * S * (R - 1), rhs=R * R * (D - 1)),
        "plateaus": {"initial": float(lv["initial"]), "hallucination": float(lv["hallucination"]),
                     "subject_first": float(lv["subject_first"]), "intermediate": float(lv["intermediate"]),
                     "intermediate_kind": "hallucination (log D)" if h else "subject-first (log R)"},
        "predicted": pred,
        "leading_order": lead,
        "leading_order_with_O1": lead1,
        "leading_order_error": err,
        "predicted_plateau": pl,
        "plateau_length_leading": (-2 * math.log(alpha) * abs(1 / lam_s - 1 / lam_r)  # log(1/alpha^2), no underflow
                                   if lam_s > 0 and lam_r > 0 else None),
        "thresholds": {f"theta{i}": float(pt[f"theta{i}"][0]) for i in (1, 2, 3)},
        "method": "exact quadrature of the reduced 1-D mode equations (Ei + Gauss-Legendre), safeguarded "
                  "Newton for the crossings; float64, ~1e-12 relative",
    }


def algebra() -> dict:
    """The symbolic part: reduced loss, equations, conserved quantities and proofs, as strings and LaTeX."""
    import sympy as sp

    from analysis.theory import reduction as rd

    d = rd.derivation()
    proofs = rd.proofs()
    eq = {name: d["rhs"][p] for name, p in zip(rd.PARAM_NAMES, rd.PARAMS)}
    return dict(
        loss=str(d["loss"]), loss_latex=sp.latex(d["loss"]),
        loss_split=[str(x) for x in d["loss_split"]], loss_split_latex=[sp.latex(x) for x in d["loss_split"]],
        equations={k: str(v) for k, v in eq.items()}, equations_latex={k: sp.latex(v) for k, v in eq.items()},
        multiplicities={n: str(rd.MULTIPLICITY[p]) for n, p in zip(rd.PARAM_NAMES, rd.PARAMS)},
        conserved={k: str(v) for k, v in d["conserved"].items()},
        conserved_latex={k: sp.latex(v) for k, v in d["conserved"].items()},
        conserved_time_derivative={k: str(v) for k, v in d["dconserved"].items()},
        margin_equations=[str(x) for x in d["margin_rhs"]],
        margin_equations_latex=[sp.latex(x) for x in d["margin_rhs"]],
        tau_latex=sp.latex(d["tau"]), tau_leading_latex=sp.latex(d["tau_leading"]),
        rates={k: str(v) for k, v in d["rates"].items()}, rates_latex={k: sp.latex(v) for k, v in d["rates"].items()},
        hallucination_ratio=str(d["hallucination_ratio"]),
        plateau_limits={k: str(v) for k, v in d["plateaus"].items()},
        proofs=proofs,
    )


def markdown(pred: dict, alg: dict) -> str:
    from analysis.theory.general import theory_markdown

    c = pred["config"]
    if not pred.get("reduced", True):
        return (f"# Gradient flow of model 1 beyond uniform data: S={c['S']}, R={c['R']}, D={c['D']}, "
                f"alpha={c['alpha']:g}, facts={c['facts']}, zipf_subjects={c['zipf_subjects']:g}, "
                f"zipf_relations={c['zipf_relations']:g}\n\n{pred['note']}.\n\n" + theory_markdown(pred["general"]))
    L = []
    L.append(f"# Reduced gradient flow of model 1: S={c['S']}, R={c['R']}, D={c['D']}, alpha={c['alpha']:g}\n")
    L.append("Class parameters: subject token $w_1$ (its own answers), $w_0$ (other answers), $k$; relation token "
             "$v_1$ (its block), $v_0$ (other blocks), $\\kappa$; noise $w_n, k_n$; EOS $w_E, k_E$.\n")
    L.append("## Reduced loss (from the model's definition)\n")
    L.append(f"$$L_{{red}} = {alg['loss_latex']}$$\n")
    L.append("It splits into a subject part and a relation part of the margins $a = k(w_1-w_0)$, "
             "$b = \\kappa(v_1-v_0)$, and $T$, $N$ drop out:\n")
    L.append(f"$$L = {alg['loss_split_latex'][0]} + {alg['loss_split_latex'][1]}$$\n")
    L.append("## Reduced equations $\\dot p = -\\frac{1}{n_p}\\partial L_{red}/\\partial p$\n")
    for k, v in alg["equations_latex"].items():
        L.append(f"- $\\dot{{{k}}} = {v}$  (stands for {alg['multiplicities'][k]} entries)")
    L.append("\n## Conserved quantities (each $dQ/dt$ simplifies to exactly 0)\n")
    for k, v in alg["conserved_latex"].items():
        L.append(f"- {k}: ${v}$  — $dQ/dt$ = {alg['conserved_time_derivative'][k]}")
    L.append("\nWith them each mode is one scalar equation (the smallest exact system):\n")
    L.append(f"$$\\dot a = {alg['margin_equations_latex'][0]},\\qquad \\dot b = {alg['margin_equations_latex'][1]}$$\n")
    L.append("solved by quadrature, $t = \\tau(m)$ with\n")
    L.append(f"$$\\tau(m) = {alg['tau_latex']}$$\n")
    L.append("and $\\tau_S(a) - \\tau_R(b)$ is the last conserved quantity (transcendental).\n")
    L.append("Leading order in $\\alpha$:\n")
    L.append(f"$$\\tau(m) \\approx {alg['tau_leading_latex']}$$\n")
    L.append("## Escape rates at the origin (rates of the margins)\n")
    L.append(f"- relation: $\\lambda_R = {alg['rates_latex']['relation']}$ = {pred['rates']['relation']:.6g}")
    L.append(f"- subject: $\\lambda_S = {alg['rates_latex']['subject']}$ = {pred['rates']['subject']:.6g}\n")
    L.append("## Hallucination condition\n")
    L.append(f"$(\\lambda_R/\\lambda_S)^2 = {alg['hallucination_ratio']}$: the relation mode escapes first iff "
             f"$S^2(R-1) > R^2(D-1)$. Here {pred['hallucination_condition_value']['lhs']} vs "
             f"{pred['hallucination_condition_value']['rhs']}: **hallucination stage "
             f"{'exists' if pred['hallucination_stage_exists'] else 'does not exist'}**; intermediate plateau "
             f"{pred['plateaus']['intermediate_kind']} at L = {pred['plateaus']['intermediate']:.6f}.\n")
    L.append("## Phase times\n")
    L.append("| | exact (quadrature) | log(1/α²)/λ | rel. error | with O(1) term | rel. error | mode |")
    L.append("|---|---|---|---|---|---|---|")
    for i in (1, 2, 3):
        e = pred["leading_order_error"][f"t{i}"]

        def g(x):
            return "—" if x is None else f"{x:.6g}"
        L.append(f"| t{i} | {g(pred['predicted'][f't{i}'])} | {g(pred['leading_order'][f't{i}'])} | "
                 f"{g(e['leading_rel'])} | {g(pred['leading_order_with_O1'][f't{i}'])} | {g(e['leading_o1_rel'])} | "
                 f"{e['mode']} |")
    L.append("\n## Proofs\n")
    for k, v in alg["proofs"].items():
        L.append(f"- [{'x' if v else ' '}] {k}")
    return "\n".join(L) + "\n\n" + ("" if pred["general"] is None else theory_markdown(pred["general"]))


@dataclass(frozen=True)
class DeriveResult:
    """The derivation for one configuration: ``predictions`` (numbers) and ``algebra`` (sympy results as
    strings and LaTeX). ``to_dict()`` is derivation.json, ``markdown()`` derivation.md."""

    predictions: dict = field(repr=False)
    algebra: dict = field(repr=False)

    def __repr__(self) -> str:
        c, p = self.predictions["config"], self.predictions.get("predicted")

        def g(x):
            return "None" if x is None else f"{x:.10g}"

        proofs = self.algebra["proofs"]
        h = self.predictions["hallucination"] or {"visible": None}
        if p is None:
            return (f"DeriveResult(S={c['S']}, R={c['R']}, D={c['D']}, alpha={c['alpha']:g}, reduced=False, "
                    f"staircase={len(self.predictions['staircase'])} levels, hallucination_visible={h['visible']})")
        return (f"DeriveResult(S={c['S']}, R={c['R']}, D={c['D']}, alpha={c['alpha']:g}, "
                f"hallucination_stage_exists={self.predictions['hallucination_stage_exists']}, t1={g(p['t1'])}, "
                f"t2={g(p['t2'])}, t3={g(p['t3'])}, proofs={sum(proofs.values())}/{len(proofs)})")

    def to_dict(self) -> dict:
        return self.predictions | {"algebra": self.algebra}

    def markdown(self) -> str:
        return markdown(self.predictions, self.algebra)

    def save(self, folder: str, *, overwrite: bool = False) -> None:
        """Write derivation.json and derivation.md into ``folder``, as a whole (common.io.output_dir; an
        existing non-empty ``folder`` is refused unless ``overwrite``)."""
        from common.io import output_dir, write_json, write_text

        with output_dir(folder, overwrite=overwrite) as d:
            write_json(os.path.join(d, "derivation.json"), self.to_dict())
            write_text(os.path.join(d, "derivation.md"), self.markdown())


def derive_reduction(S: int, R: int, D: int, alpha: float, eps_conv: float = 1e-2, *, task=None,
                     exact: bool = True) -> DeriveResult:
    """Derive the reduced flow with sympy and its predictions for (S, R, D, alpha), and the general theory
    (per-token rates, staircase, hallucination: analysis.theory.general) for ``task`` (a models.TaskConfig; default the
    structured table of these sizes with uniform frequencies).

    The class reduction and its t1, t2, t3 need uniform frequencies on a structured or balanced table with
    D | S; elsewhere ``predictions`` holds the general theory only (``reduced`` is false).
    """
    from models.task import TaskConfig

    from analysis.theory.predict import ALPHA_MAX
    from analysis.theory.general import general_theory

    S, R, D = (check_int(n, v, 1, MAX_SIZE) for n, v in (("S", S), ("R", R), ("D", D)))
    alpha = check_positive("alpha", alpha, maximum=ALPHA_MAX,
                           why="above it the phase times fall below 1e-200 and the model's logits overflow")
    eps_conv = check_positive("eps_conv", eps_conv)
    task = TaskConfig(S=S, R=R, D=D) if task is None else task
    if (task.S, task.R, task.D) != (S, R, D):
        raise ConfigError(f"task sizes {task.S, task.R, task.D} differ from S, R, D = {S, R, D}")
    uniform = task.zipf_subjects == 0 and task.zipf_relations == 0 and task.facts in ("structured", "balanced")
    if uniform and S % D:
        raise ConfigError(f"S = {S}, D = {D}: the reduction needs D to divide S (equal subject counts per answer)")
    if not uniform and not alpha < 1:
        raise ConfigError(f"alpha = {alpha:g}: beyond uniform data the predictions are expansions in log(1/alpha) "
                          "and need alpha < 1")
    # the staircase and hallucination predictions are expansions in log(1/alpha): none for alpha >= 1
    general = general_theory(task, alpha, exact=exact) if alpha < 1 else None
    if uniform:
        pred = predictions(S, R, D, alpha, eps_conv) | {"reduced": True}
    else:
        pred = {"config": dict(S=S, R=R, D=D, alpha=alpha, eps_conv=eps_conv), "reduced": False,
                "note": "the class reduction needs uniform frequencies on a structured or balanced table; "
                        "see 'general' for this configuration"}
    pred["config"].update(facts=task.facts, facts_file=task.facts_file, seed=task.seed,
                          zipf_subjects=task.zipf_subjects, zipf_relations=task.zipf_relations)
    pred["general"] = general
    pred["staircase"] = None if general is None else general["staircase"]
    pred["hallucination"] = None if general is None else general["hallucination"]
    return DeriveResult(predictions=pred, algebra=algebra())


@guarded
def main(argv=None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    S, R, D = (check_int(n, v, 1, MAX_SIZE) for n, v in (("S", a.S), ("R", a.R), ("D", a.D)))
    check_int("T", a.T, 3, MAX_SIZE)
    check_int("N", a.N, 1, MAX_SIZE)
    from models.task import TaskConfig

    task = TaskConfig(S=S, R=R, D=D, T=a.T, N=a.N, facts="file" if a.facts_file else a.facts,
                      facts_file=a.facts_file, zipf_subjects=a.zipf_subjects, zipf_relations=a.zipf_relations,
                      seed=a.seed)
    out = a.out or default_out(f"runs/derive-S{S}-R{R}-D{D}", parser, a, skip=("S", "R", "D"),
                               labels=dict(eps_conv="eps"))
    check_out(out, overwrite=a.overwrite)  # before any computation
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
              f"{'-' if h['relation_loss'] is None else format(h['relation_loss'], '.4g')}, H(A|R) "
              f"{h['H_A_given_R']:.6f})")
        print(f"wrote {out}/derivation.json, derivation.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
