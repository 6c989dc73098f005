"""Growth rates of the flow near its saddles, for any fact weights ``w(s, r)`` and any fact table.

Model 1's flow is ``dW[a, z]/dt = -G[a, z] K[z]``, ``dK[z]/dt = -sum_a G[a, z] W[a, z]`` with
``G = dL/du`` (``u = W K``, SPEC §2). Near a point where token ``z``'s parameters are small (the origin,
or a saddle the flow reaches once other tokens have been learned), ``G`` is frozen at its value there,
``G_z``, up to O(|theta|^2): the pair ``(W[:, z], K[z])`` obeys the linear system
``[[0, -G_z], [-G_z^T, 0]]``, whose eigenvalues are ``+-|G_z|`` and 0. So token ``z`` grows at the rate

    lambda_z = |G_z|  (1/time),   G_z = sum over facts containing z of  w(s, r) (P(.|s, r) - e_{a*(s, r)})

where ``P`` is the prediction at that point (uniform over the answers at the origin). Its logits
``u[:, z] = W K`` grow at ``2 lambda_z`` (both factors grow); from a balanced start of scale ``alpha`` it
leaves the origin after ``log(1/alpha) / lambda_z + O(1)`` (``log(1/alpha^2) / (2 lambda_z)``).

Per token at the origin (``P`` uniform, ``|A| = R D``; answers of different relations lie in disjoint
blocks, so the squared norms are sums over blocks)::

    subject s:   lambda_s^2 = sum_r w(s, r)^2 - W_s^2 / |A|,          W_s = sum_r w(s, r)
    relation r:  lambda_r^2 = sum_a m_r(a)^2 - W_r^2 / |A|,           m_r(a) = sum_s w(s, r) 1[a*(s, r) = a]
    EOS:         lambda_E^2 = sum_a m(a)^2 - 1 / |A|,                 m(a) = sum_r m_r(a) (answer marginal)
    one noise token:  lambda_N = (T - 3) / N * lambda_E               (it appears (T-3)/N times per sequence)

For product weights ``p(s) q(r)``: ``lambda_s = p(s) sqrt(sum_r q^2 - 1/|A|)``,
``lambda_r = q(r) sqrt(sum_a P_r(a)^2 - 1/|A|)`` with ``P_r(a)`` the p-mass of the subjects whose answer
to r is a (``P_r(a) = 1/D`` for structured and balanced tables under uniform p), and
``lambda_E^2 = sum_r q(r)^2 sum_a P_r(a)^2 - 1/|A|``: :func:`product_rate_formulas` derives these with
sympy and ``tests/analysis/theory/test_theory.py`` proves them by simplification to 0 against the definition.
The uniform case gives the reduction's eigenvalues (analysis.theory.modes.escape_rates): ``sqrt((D-1)/(R D))/S``
and ``sqrt((R-1)/(R D))/R``; the bias tokens (EOS, noise) have rate 0 there and learn nothing.

The compressed state of the flow (one noise representative, models.linear) has exactly these
eigenvalues at the origin: :func:`jacobian_rates` checks them against a finite-difference Jacobian.
"""
from __future__ import annotations

import numpy as np

# names of the token groups, in the compressed layout's order
TOKEN_KINDS = ("subject", "relation", "noise", "eos")


def _grad_rows(task, w, predictor) -> np.ndarray:
    """G (C, |A|) = dL/du per compressed token for the prediction ``predictor(s) -> (R, |A|)``.

    Loops over subjects so that memory stays O(R |A|) per step (no (S, R, |A|) array).
    """
    S, R, A = task.S, task.R, task.num_answers
    G = np.zeros((S + R + 2, A))
    rows = np.arange(R)
    for s in range(S):
        E = predictor(s) * w[s][:, None]  # (R, |A|) w (P - e)
        E[rows, task.answers[s]] -= w[s]
        G[s] = E.sum(axis=0)
        G[S:S + R] += E
    bias = G[S:S + R].sum(axis=0)  # every fact contains EOS once
    G[S + R + 1] = bias
    G[S + R] = bias * ((task.T - 3) / task.N)  # one noise token: (T-3)/N occurrences per sequence
    return G


def origin_rates(task, weights=None) -> dict:
    """Eigenvalues ``lambda_z = |G_z|`` at the origin (1/time), per token: see the module docstring.

    Returns ``subject`` (S,), ``relation`` (R,), ``noise`` and ``eos`` (floats), from the closed forms
    (no (S, R, |A|) array: O(S R) work).
    """
    w = task.fact_weights if weights is None else np.asarray(weights, dtype=np.float64)
    R, A = task.R, task.num_answers
    Ws = w.sum(axis=1)
    lam_s = np.sqrt(np.maximum((w * w).sum(axis=1) - Ws ** 2 / A, 0.0))
    m = np.zeros((R, A))
    for r in range(R):
        np.add.at(m[r], task.answers[:, r], w[:, r])
    lam_r = np.sqrt(np.maximum((m * m).sum(axis=1) - m.sum(axis=1) ** 2 / A, 0.0))
    lam_e = float(np.sqrt(max((m * m).sum() - 1.0 / A, 0.0)))
    return dict(subject=lam_s, relation=lam_r, noise=lam_e * (task.T - 3) / task.N, eos=lam_e)


def rates_at(task, weights, predictor) -> np.ndarray:
    """(C,) growth rates ``|G_z|`` of every compressed token at a point whose prediction is ``predictor``.

    predictor(s) -> (R, |A|) array of P(.|s, r) for the facts of subject s (rows summing to 1).
    Valid for the tokens whose parameters are still small there (the others are not growing modes).
    """
    return np.linalg.norm(_grad_rows(task, np.asarray(weights, dtype=np.float64), predictor), axis=1)


def split_rates(task, lam: np.ndarray) -> dict:
    """The (C,) compressed-token array ``lam`` as dict(subject, relation, noise, eos)."""
    S, R = task.S, task.R
    return dict(subject=lam[:S], relation=lam[S:S + R], noise=float(lam[S + R]), eos=float(lam[S + R + 1]))


def jacobian_rates(task, weights=None, *, eps: float = 1e-5) -> np.ndarray:
    """Positive eigenvalues of a finite-difference Jacobian of the exact flow at the origin, descending.

    The flow's right-hand side F is odd (u = W K is even in the state, G(u) then too), so the central
    difference (F(eps v) - F(-eps v)) / (2 eps) = J v + O(eps^2) (relative error ~1e-10 at eps = 1e-5).
    An independent check of :func:`origin_rates`: uses only ``PopulationObjective.flow_rhs``.
    """
    import torch

    from models.population import PopulationObjective

    obj = PopulationObjective(task, weights=weights)
    P = obj.layout.size
    J = np.empty((P, P))
    y = torch.zeros(P, dtype=torch.float64)
    for i in range(P):
        y.zero_()
        y[i] = eps
        fp = obj.flow_rhs(y).numpy().copy()
        y[i] = -eps
        fm = obj.flow_rhs(y).numpy()
        J[:, i] = (fp - fm) / (2 * eps)
    ev = np.linalg.eigvals(J)
    ev = ev.real[np.abs(ev.imag) <= 1e-12 * max(1.0, np.abs(ev).max())]
    tol = 1e-9 * max(float(np.abs(ev).max()), 1e-300)
    return np.sort(ev[ev > tol])[::-1]


def predicted_spectrum(task, weights=None) -> np.ndarray:
    """The positive eigenvalues :func:`jacobian_rates` should find: every nonzero origin rate, descending."""
    r = origin_rates(task, weights)
    lam = np.concatenate([r["subject"], r["relation"], [r["noise"], r["eos"]]])
    tol = 1e-9 * max(float(lam.max()), 1e-300)
    return np.sort(lam[lam > tol])[::-1]


# ----------------------------------------------------------------------------- symbolic closed forms
def product_rate_formulas() -> dict:
    """Sympy closed forms of the squared origin rates for product weights ``p(s) q(r)``.

    Symbols: ``p`` the subject's frequency, ``q`` the relation's, ``Q2 = sum_r q(r)^2``,
    ``P2`` = sum_a P_r(a)^2 (the squared p-masses of relation r's answers), ``M2 = sum_r q(r)^2 P2_r``
    (= Q2 P2 when every relation has the same P2, as on structured and balanced tables), ``A = R D``.
    Returns dict(subject, relation, eos) of sympy expressions, and ``uniform``: the structured, uniform case.
    """
    import sympy as sp

    p, q, Q2, P2, M2, R, D, T, N = sp.symbols("p q Q2 P2 M2 R D T N", positive=True)
    A = R * D
    out = dict(subject=p ** 2 * (Q2 - 1 / A), relation=q ** 2 * (P2 - 1 / A), eos=M2 - 1 / A)
    out["noise"] = ((T - 3) / N) ** 2 * out["eos"]
    S = sp.symbols("S", positive=True)
    uni = {p: 1 / S, q: 1 / R, Q2: 1 / R, P2: 1 / D, M2: 1 / (R * D)}
    out["uniform"] = {k: sp.simplify(out[k].subs(uni)) for k in ("subject", "relation", "eos")}
    return out


def symbolic_origin_rates(S: int, R: int, D: int, answers) -> tuple:
    """Sympy check data: the squared norms |G_z|^2 at the origin computed from the definition, entry by entry,
    for symbolic product weights on the (S, R) table ``answers``, beside the closed forms of
    :func:`product_rate_formulas` with the same symbols substituted.

    Returns (definition, closed_form): two dicts token -> list of sympy expressions (subjects, relations, eos).
    """
    import sympy as sp

    ps = sp.symbols(f"p0:{S}", positive=True)
    qs = sp.symbols(f"q0:{R}", positive=True)
    A = R * D
    G = {}
    for s in range(S):
        v = [sum(ps[s] * qs[r] / A for r in range(R)) for _ in range(A)]
        for r in range(R):
            v[int(answers[s][r])] -= ps[s] * qs[r]
        G[("subject", s)] = v
    for r in range(R):
        v = [sum(ps[s] * qs[r] for s in range(S)) / A for _ in range(A)]
        for s in range(S):
            v[int(answers[s][r])] -= ps[s] * qs[r]
        G[("relation", r)] = v
    v = [sum(ps[s] * qs[r] for s in range(S) for r in range(R)) / A for _ in range(A)]
    for s in range(S):
        for r in range(R):
            v[int(answers[s][r])] -= ps[s] * qs[r]
    G[("eos", 0)] = v
    f = product_rate_formulas()
    sym = sp.symbols("p q Q2 P2 M2 R D", positive=True)
    psym, qsym, Q2, P2, M2, Rs, Ds = sym
    tot_p = sum(ps)
    Pr = [[sum(ps[s] for s in range(S) if int(answers[s][r]) == r * D + j) / tot_p for j in range(D)]
          for r in range(R)]
    tot_q = sum(qs)
    definition, closed = {}, {}
    norm = tot_p * tot_q  # weights p q / (sum p sum q): the symbols need not sum to 1
    for (kind, i), v in G.items():
        definition.setdefault(kind, []).append(sum(x * x for x in v) / norm ** 2)
        if kind == "subject":
            e = f["subject"].subs({psym: ps[i] / tot_p, Q2: sum(x * x for x in qs) / tot_q ** 2})
        elif kind == "relation":
            e = f["relation"].subs({qsym: qs[i] / tot_q, P2: sum(x * x for x in Pr[i])})
        else:
            e = f["eos"].subs({M2: sum((qs[r] / tot_q) ** 2 * sum(x * x for x in Pr[r]) for r in range(R))})
        closed.setdefault(kind, []).append(e.subs({Rs: R, Ds: D}))
    return definition, closed
