"""The symbolic reduction of model 1's gradient flow and its predictions for one (S, R, D, alpha):
:func:`derive_reduction` returns a :class:`DeriveResult` (derivation.json and derivation.md).

    from analysis import derive_reduction
    result = derive_reduction(16, 4, 8, 1e-5)
    result.predictions["predicted"]["t2"], result.save("runs/derive")

The command line ``python -m analysis.derive`` (frd-derive) parses its flags, calls this and prints.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from common.errors import ConfigError, check_int, check_positive
from models.task import MAX_SIZE


def _f(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def predictions(S, R, D, alpha, eps_conv=1e-2) -> dict:
    """Numbers of the derivation for one configuration (the content of derivation.json minus the algebra)."""
    from analysis.theory.modes import escape_rates, hallucination_stage_exists, plateau_levels
    from analysis.theory.plateau import plateau
    from analysis.theory.reduced_phases import phase_times_any  # null where a phase does not exist (R, D = 1)

    r = escape_rates(S, R, D)
    pt = phase_times_any([S], [R], [D], [alpha], eps_conv)
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
                f"T={c['T']}, N={c['N']}, alpha={c['alpha']:g}, facts={c['facts']}, zipf_subjects={c['zipf_subjects']:g}, "
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
    from models.linear import QUADRATURE_ALPHA
    from models.task import TaskConfig

    from analysis.theory.general import general_theory

    S, R, D = (check_int(n, v, 1, MAX_SIZE) for n, v in (("S", S), ("R", R), ("D", D)))
    alpha = check_positive("alpha", alpha, maximum=QUADRATURE_ALPHA.maximum, why=QUADRATURE_ALPHA.why)
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
    # T and N: the reduction's numbers do not depend on them (proven: they drop out of its loss); the general
    # theory's do (noise and EOS rates, the exact staircase and hallucination stage), so they are recorded always
    pred["config"].update(T=task.T, N=task.N, facts=task.facts, facts_file=task.facts_file, seed=task.seed,
                          zipf_subjects=task.zipf_subjects, zipf_relations=task.zipf_relations)
    pred["general"] = general
    pred["staircase"] = None if general is None else general["staircase"]
    pred["hallucination"] = None if general is None else general["hallucination"]
    return DeriveResult(predictions=pred, algebra=algebra())
