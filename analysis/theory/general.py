"""The theory beyond uniform data for one configuration: origin rates, escape order, staircase and the
alpha-aware hallucination prediction, as one JSON-ready dict (the ``general`` part of derivation.json).

    from analysis.theory.general import general_theory
    general_theory(TaskConfig(S=16, R=4, D=8, zipf_subjects=1.0), alpha=1e-5)
"""
from __future__ import annotations

import math


def _f(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def general_theory(task_config, alpha: float, *, exact: bool = True, rho: float | None = None) -> dict:
    """Rates, escape order, staircase and hallucination for a models.TaskConfig (its own weights p(s) q(r)).

    exact: integrate the exact flow (two-mode quadrature where it applies, else the full flow) for the
    staircase's t_end and the hallucination stage; False gives the leading-order predictions only.
    """
    from models.task import make_task

    from analysis.theory.escape import origin_rates, product_rate_formulas
    from analysis.theory.hallucination import RHO, hallucination
    from analysis.theory.staircase import escape_schedule, reducible, staircase

    task = make_task(task_config)
    w = task.fact_weights
    r = origin_rates(task, w)
    sched = escape_schedule(task, w, alpha)
    sc = staircase(task, w, alpha, exact=exact, schedule=sched)  # one schedule for all three
    hal = hallucination(task, w, alpha, rho=RHO if rho is None else rho, exact=exact, schedule=sched)
    lead = hal.pop("leading_order")
    errs = sc.leading_errors()
    f = product_rate_formulas()
    return {
        "reducible": reducible(task, w),
        "rates": {
            "subject": [float(x) for x in r["subject"]], "relation": [float(x) for x in r["relation"]],
            "eos": float(r["eos"]), "noise": float(r["noise"]),
            "note": "eigenvalues |G_z| of the linearized flow at the origin, per token (1/time); logits grow at "
                    "twice these; formulas for product weights: " +
                    "; ".join(f"lambda_{k}^2 = {f[k]}" for k in ("subject", "relation", "eos")),
        },
        "escape_order": [dict(t_leading=_f(st.t), modes=list(st.modes), rates=list(st.rates), level=_f(st.level),
                              efolds=_f(st.efolds)) for st in sched],
        "staircase": sc.to_list(),
        "staircase_method": sc.exact_method or "leading order",
        "staircase_leading_rel_error": [_f(e) for e in errs],
        "hallucination": {k: (_f(v) if isinstance(v, float) else v) for k, v in hal.items()} | {
            "leading_order": {k: (_f(v) if isinstance(v, float) else v) for k, v in lead.items()}},
    }


def theory_markdown(g: dict) -> str:
    """derivation.md's section on the general theory (rates, staircase, hallucination)."""
    from analysis.theory.staircase import describe_modes

    L = ["## Beyond uniform data: per-token rates, staircase, hallucination\n"]
    rt = g["rates"]
    L.append(f"Origin rates (1/time; {rt['note']}):\n")
    L.append("- subjects: " + _list(rt["subject"]))
    L.append("- relations: " + _list(rt["relation"]))
    L.append(f"- EOS {rt['eos']:.6g}, one noise token {rt['noise']:.6g}\n")
    L.append("Leading-order escape order (saddle to saddle; a mode escapes when "
             "$\\int_0^t \\lambda_z = \\log(1/\\alpha)$):\n")
    L.append("| t (leading) | modes | level after | e-folds of the plateau after |")
    L.append("|---|---|---|---|")
    for st in g["escape_order"]:
        ef = "—" if st["efolds"] is None else f"{st['efolds']:.3g}"
        L.append(f"| {_txt(st['t_leading'], '.6g')} | {describe_modes(st['modes'])} | {_txt(st['level'], '.6f')} | {ef} |")
    L.append(f"\nStaircase (resolved plateaus; t_end by {g['staircase_method']}):\n")
    L.append("| level | t_end | t_end (leading order) | rel. error | ends when |")
    L.append("|---|---|---|---|---|")
    for lv, e in zip(g["staircase"], g["staircase_leading_rel_error"]):
        def h(x, fmt=".6g"):
            return "—" if x is None else format(x, fmt)
        L.append(f"| {h(lv['level'], '.6f')} | {h(lv['t_end'])} | {h(lv['t_end_leading'])} | {h(e, '.3g')} | "
                 f"{describe_modes(lv['escaping'])} |")
    hl = g["hallucination"]
    lo = hl["leading_order"]
    L.append(f"\nHallucination stage at this alpha ({hl['method']}; visible when the loss is within "
             f"{hl['rho']:g} H(A|R) of H(A|R) while the relation-only loss is within {hl['rho']:g} H(A|R) of 0): "
             f"**{'visible' if hl['visible'] else 'not visible'}**; H(A|R) = {hl['H_A_given_R']:.6f}, "
             f"duration {_txt(hl['duration'])}, relation-only loss when the loss leaves the band "
             f"{_txt(hl['relation_loss'])}, "
             f"distance d/H = {_txt(hl['distance'])}. Leading order: relations escape "
             f"{'before' if lo['relations_first'] else 'not before'} the subjects, duration {_txt(lo['duration'])}, "
             f"{_txt(lo['efolds'])} e-folds -> {'visible' if lo['visible'] else 'not visible'}.\n")
    return "\n".join(L) + "\n"


def _txt(x, fmt: str = ".4g") -> str:
    return "—" if x is None else format(x, fmt)


def _list(xs, most: int = 24) -> str:
    """Numbers joined by commas; long lists show the first and last few and say how many."""
    f = [f"{x:.6g}" for x in xs]
    if len(f) <= most:
        return ", ".join(f)
    return ", ".join(f[:8]) + f", ... ({len(f)} in all; every one in derivation.json) ..., " + ", ".join(f[-4:])
