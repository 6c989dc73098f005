"""Symbolic reduction of model 1's exact gradient flow (SPEC §2) to symmetry classes, with sympy.

Assumptions (checked by :func:`analysis.theory.reduced_flow.check_reducible` before anything numeric uses
this): every answer is held by the same number ``S/D`` of subjects in its relation (``structured``
or ``balanced`` tables with ``D | S``), uniform ``p`` and ``q``, and an initialization that is
constant within the classes below (``balanced`` or ``uniform``).

Classes of parameters (all entries of a class are equal for all time, because the gradient
evaluated on such a state is again constant on every class):

=========  =========================================  =======================  ==============
symbol     what it stands for                         entries it stands for    token
=========  =========================================  =======================  ==============
``w1``     ``W[a, s]``, ``a`` one of subject s's R    ``S*R``                  subject
           answers (``a*(s, r)`` for some r)
``w0``     ``W[a, s]``, any other answer              ``S*R*(D-1)``            subject
``k``      ``K[s]``                                   ``S``                    subject
``v1``     ``W[a, r]``, ``a`` in relation r's block   ``R*D``                  relation
``v0``     ``W[a, r]``, ``a`` outside it              ``R*(R-1)*D``            relation
``kap``    ``K[r]``                                   ``R``                    relation
``wn, kn`` ``W[a, n]``, ``K[n]`` of a noise token     ``N*R*D``, ``N``         noise
``we, ke`` ``W[a, EOS]``, ``K[EOS]``                  ``R*D``, ``1``           EOS
=========  =========================================  =======================  ==============

The reduced loss is built from the definition of the model: the logit of answer ``a`` on fact
``(s, r)`` is ``sum_t W[a, z_t] K[z_t]`` over the sequence (subject, relation, ``T-3`` noise
tokens, EOS), and relative to ``(s, r)`` the ``R*D`` answers fall in four classes: the true
answer (1 of them), the other answers of block r (``D-1``), subject s's answers in the other
blocks (``R-1``) and the rest (``(R-1)(D-1)``). Every fact looks the same, so the population
loss is the loss of one fact. Gradient flow on the full parameters gives, for a class
parameter ``p`` standing for ``n_p`` equal entries, ``dp/dt = -(1/n_p) dL_red/dp`` (the
derivative of the reduced loss is the sum of the ``n_p`` equal per-entry derivatives).

Everything here is exact symbolic algebra; :func:`derivation` caches the result (a few
seconds of sympy the first time).
"""
from __future__ import annotations

import functools

import sympy as sp

# ----------------------------------------------------------------------------- symbols
S, R, D, T, N = sp.symbols("S R D T N", positive=True, integer=True)
alpha = sp.Symbol("alpha", positive=True)
w1, w0, k, v1, v0, kap, wn, kn, we, ke = sp.symbols("w_1 w_0 k v_1 v_0 kappa w_n k_n w_E k_E", real=True)
PARAMS = (w1, w0, k, v1, v0, kap, wn, kn, we, ke)
PARAM_NAMES = ("w1", "w0", "k", "v1", "v0", "kap", "wn", "kn", "we", "ke")
#: number of real entries each class parameter stands for
MULTIPLICITY = {w1: S * R, w0: S * R * (D - 1), k: S, v1: R * D, v0: R * (R - 1) * D, kap: R,
                wn: N * R * D, kn: N, we: R * D, ke: sp.Integer(1)}
a_, b_, m_, x_ = sp.symbols("a b m x", real=True)  # subject margin, relation margin, generic margin
Qs, Qr, Q_ = sp.symbols("Q_S Q_R Q", positive=True)  # hyperbolic invariants (k^2 - c delta^2 > 0 from rest)
n_, P_, c_ = sp.symbols("n P c", positive=True)  # generic mode: n choices, time scale P, metric c
t_ = sp.Symbol("t", nonnegative=True)


def class_logits():
    """Logits of the four answer classes of a fact (s, r), from xi(a) = sum_t W[a, z_t] K[z_t]."""
    shared = (T - 3) * wn * kn + we * ke  # noise tokens and EOS: the same for every answer
    return {  # (answer is one of s's answers?, answer is in r's block?) -> logit
        (1, 1): w1 * k + v1 * kap + shared,  # the true answer a*(s, r)
        (0, 1): w0 * k + v1 * kap + shared,
        (1, 0): w1 * k + v0 * kap + shared,
        (0, 0): w0 * k + v0 * kap + shared,
    }


#: how many of the R*D answers fall in each class, relative to a fact (s, r): subject s has exactly
#: one answer per block, relation r's block has D answers.
CLASS_COUNTS = {(1, 1): sp.Integer(1), (0, 1): D - 1, (1, 0): R - 1, (0, 0): (R - 1) * (D - 1)}


def reduced_loss():
    """L_red(class parameters): cross-entropy of one fact = the population loss (all facts alike)."""
    xi = class_logits()
    Z = sum(CLASS_COUNTS[c] * sp.exp(xi[c]) for c in xi)
    return sp.log(Z) - xi[(1, 1)]


def mode_loss_expr(m, n):
    """Loss of one 'mode' with n choices and margin m: log(1 + (n-1) e^{-m})."""
    return sp.log(1 + (n - 1) * sp.exp(-m))


def _simp(e):
    """Compact form of a flow equation: one fraction, factored."""
    return sp.factor(sp.together(sp.expand(e)))


def exp_free(e):
    """Rewrite ``e`` as a rational function of independent exponentials, then cancel.

    Every exponential is split into factors exp(c * monomial) = X_monomial ** c (c a number), and
    each X is replaced by a positive dummy symbol. Sums of exponentials of sums then become plain
    rational functions, and ``cancel`` decides identities exactly (and fast, unlike ``simplify``).
    """
    e = sp.expand(e, power_exp=True, mul=True, multinomial=False, log=False)
    reps = {}

    def rep(x):
        factor = sp.Integer(1)
        for term in sp.Add.make_args(sp.expand(x.args[0])):
            c, mono = term.as_coeff_Mul()
            if mono not in reps:
                reps[mono] = sp.Dummy("X", positive=True)
            factor *= reps[mono] ** c
        return factor

    e = e.replace(lambda x: isinstance(x, sp.exp), rep)
    return sp.cancel(sp.together(e))


def is_zero(e) -> bool:
    """Exact check that ``e`` simplifies to 0 (exponentials first made independent symbols)."""
    return exp_free(e) == 0


@functools.lru_cache(maxsize=1)
def derivation() -> dict:
    """The whole derivation as a dict of sympy expressions and checked identities.

    Keys:
      loss: reduced loss L_red(params); loss_split: (L_S(a), L_R(b)) with a = k (w1-w0), b = kap (v1-v0);
      split_check: L_red - L_S - L_R (simplifies to 0); rhs: {param: d param/dt};
      T_N_free: dL_red/dT and dL_red/dN (0: T and N do not enter); conserved: {name: expression};
      dconserved: {name: simplified time derivative (0)}; margin_rhs: (da/dt, db/dt) in the class
      parameters and the closed 1-D forms; jacobian_origin, eigen (linearization at 0); rates;
      plateaus; hallucination_ratio.
    """
    out, (L, LS, LR, margins) = _loss_identities()
    rhs, cons = _class_flow(out, L, LS, LR, margins)
    Fa, Fb = _mode_equations(out, rhs, cons)
    _rates_and_levels(out, rhs, Fa, Fb, LS, LR)
    return out


def _loss_identities():
    """The reduced loss and its structure (normaliser factorisation, split into the two modes, no T or N):
    (entries of the derivation, (L_red, L_S, L_R, the margins a, b in the class parameters))."""
    out = {}
    L = reduced_loss()
    out["loss"] = L
    xi = class_logits()
    # structure: the normaliser factorises into a subject part and a relation part
    Zs = sp.exp(w1 * k) + (D - 1) * sp.exp(w0 * k)
    Zr = sp.exp(v1 * kap) + (R - 1) * sp.exp(v0 * kap)
    shared = (T - 3) * wn * kn + we * ke
    Z = sum(CLASS_COUNTS[c] * sp.exp(xi[c]) for c in xi)
    out["Z_factorisation_check"] = exp_free(Z - sp.exp(shared) * Zs * Zr)
    LS = mode_loss_expr(a_, D)
    LR = mode_loss_expr(b_, R)
    out["loss_split"] = (LS, LR)
    margins = {a_: k * (w1 - w0), b_: kap * (v1 - v0)}
    diff_split = (sp.log(Zs) - w1 * k) + (sp.log(Zr) - v1 * kap) - (LS + LR).subs(margins)
    out["split_check"] = exp_free(sp.exp(diff_split) - 1)  # exp(difference) = 1 <=> difference = 0 (real)
    out["T_N_free"] = (exp_free(sp.diff(L, T)), exp_free(sp.diff(L, N)))
    return out, (L, LS, LR, margins)


def _class_flow(out: dict, L, LS, LR, margins):
    """The class flow dp/dt and its conserved quantities, into ``out``; returns (rhs, conserved)."""
    # reduced flow: dp/dt = -(1/multiplicity) dL_red/dp
    grads = {p: sp.diff(L, p) for p in PARAMS}
    rhs = {p: _simp(-grads[p] / MULTIPLICITY[p]) for p in PARAMS}
    out["rhs"] = rhs
    out["rhs_check_split"] = {p: exp_free(rhs[p] + sp.diff((LS + LR).subs(margins), p) / MULTIPLICITY[p])
                              for p in PARAMS}
    # conserved quantities, each as a function of the class parameters
    cs = R * (D - 1) / D  # metric of the subject mode: |W_s - mean|^2 = cs (w1 - w0)^2
    cr = D * (R - 1) / R
    cons = {
        "Q_subject": k**2 - R * w1**2 - R * (D - 1) * w0**2,  # K^2 - |W|^2 of a subject token
        "M_subject": R * w1 + R * (D - 1) * w0,  # sum_a W[a, s]
        "Q_relation": kap**2 - D * v1**2 - D * (R - 1) * v0**2,
        "M_relation": D * v1 + D * (R - 1) * v0,
        "Q_noise": kn**2 - R * D * wn**2, "M_noise": R * D * wn,
        "Q_eos": ke**2 - R * D * we**2, "M_eos": R * D * we,
        "P_noise_eos": kn * ke - R * D * wn * we,
        "Qhat_subject": k**2 - cs * (w1 - w0)**2,  # = Q_subject + M_subject^2/(R D)
        "Qhat_relation": kap**2 - cr * (v1 - v0)**2,
        "w_noise": wn, "k_noise": kn, "w_eos": we, "k_eos": ke,  # noise and EOS do not move at all
    }
    out["conserved"] = cons
    out["dconserved"] = {name: exp_free(sum(sp.diff(e, p) * rhs[p] for p in PARAMS))
                         for name, e in cons.items()}
    out["Qhat_identity"] = (sp.simplify(cons["Qhat_subject"] - cons["Q_subject"] - cons["M_subject"]**2 / (R * D)),
                            sp.simplify(cons["Qhat_relation"] - cons["Q_relation"] - cons["M_relation"]**2 / (R * D)))
    return rhs, cons


def _mode_equations(out: dict, rhs: dict, cons: dict):
    """The one scalar ODE per mode (margin rates, generic mode, time to a margin), into ``out``; returns the subject
    and relation margin rates (F_a, F_b)."""
    cs = R * (D - 1) / D
    cr = D * (R - 1) / R
    # the smallest system: one scalar ODE per mode. da/dt from the class flow ...
    da = sp.diff(k * (w1 - w0), w1) * rhs[w1] + sp.diff(k * (w1 - w0), w0) * rhs[w0] + (w1 - w0) * rhs[k]
    db = kap * rhs[v1] - kap * rhs[v0] + (v1 - v0) * rhs[kap]
    sig = 1 / (1 + (D - 1) * sp.exp(-(k * (w1 - w0))))
    eta = 1 / (1 + (R - 1) * sp.exp(-(kap * (v1 - v0))))
    # ... equals (1 - sigma) (k^2 + cs delta^2) / (S cs), and (k^2 + cs delta^2)^2 = Qhat^2 + 4 cs a^2
    out["margin_rhs_check"] = (
        exp_free(da - (1 - sig) * (k**2 + cs * (w1 - w0)**2) / (S * cs)),
        exp_free(db - (1 - eta) * (kap**2 + cr * (v1 - v0)**2) / (R * cr)),
        sp.expand((k**2 + cs * (w1 - w0)**2)**2 - cons["Qhat_subject"]**2 - 4 * cs * (k * (w1 - w0))**2),
        sp.expand((kap**2 + cr * (v1 - v0)**2)**2 - cons["Qhat_relation"]**2 - 4 * cr * (kap * (v1 - v0))**2),
    )
    # hence, with Q = Qhat > 0 (k^2 + c delta^2 = +sqrt(...)):
    Fa = D * sp.sqrt(Qs**2 + 4 * cs * a_**2) / (S * R * (sp.exp(a_) + D - 1))
    Fb = sp.sqrt(Qr**2 + 4 * cr * b_**2) / (D * (sp.exp(b_) + R - 1))
    out["margin_rhs"] = (Fa, Fb)
    # generic mode: dm/dt = n sqrt(Q^2 + 4 c m^2) / (P (e^m + n - 1)); subject (n, P, c) = (D, SR, cs)
    Fm = n_ * sp.sqrt(Q_**2 + 4 * c_ * m_**2) / (P_ * (sp.exp(m_) + n_ - 1))
    out["mode_rhs"] = Fm
    out["mode_params"] = {"subject": (D, S * R, cs), "relation": (R, R * D, cr)}
    out["mode_rhs_check"] = (sp.simplify(Fm.subs({n_: D, P_: S * R, c_: cs, Q_: Qs, m_: a_}) - Fa),
                             sp.simplify(Fm.subs({n_: R, P_: R * D, c_: cr, Q_: Qr, m_: b_}) - Fb))
    # time to reach margin m (quadrature), and the transcendental invariant H = tau_S(a) - tau_R(b)
    tau = sp.Integral(1 / Fm.subs(m_, x_), (x_, 0, m_))
    out["tau"] = tau
    out["dtau_check"] = sp.simplify(sp.diff(tau, m_) * Fm - 1)
    return Fa, Fb


def _rates_and_levels(out: dict, rhs: dict, Fa, Fb, LS, LR) -> None:
    """The linearization at the origin (escape rates, two checks), the hallucination ratio, the plateau levels and
    the leading-order time to a margin, into ``out``."""
    lin = linearization()
    out["jacobian_origin"] = lin["jacobian_origin"]
    out["eigen"] = lin["eigen"]
    out["rates"] = lin["rates"]
    lam_s, lam_r = lin["rates"]["subject"], lin["rates"]["relation"]
    # the jacobian from the loss built from the model equals the one of the split form used above
    raw_J = [sp.Matrix([[sp.diff(rhs[p], q) for q in blk] for p in blk]).subs({p: 0 for p in PARAMS})
             for blk in ((w1, w0, k), (v1, v0, kap))]
    out["jacobian_check"] = [sp.simplify(rj - J) for rj, J in zip(raw_J, lin["jacobian_origin"])]
    # the same rates from the 1-D equation: F(m) / m -> 2 sqrt(c) / P for Q << m << 1
    out["rate_from_mode_check"] = (sp.simplify(sp.limit(Fa.subs(Qs, 0) / a_, a_, 0) - lam_s),
                                   sp.simplify(sp.limit(Fb.subs(Qr, 0) / b_, b_, 0) - lam_r))
    ratio = sp.simplify((lam_r / lam_s)**2)
    out["hallucination_ratio"] = ratio  # (lambda_R / lambda_S)^2 = S^2 (R-1) / (R^2 (D-1))
    # plateau levels as limits of L = L_S(a) + L_R(b)
    Ltot = LS + LR
    out["plateaus"] = {
        "initial": sp.simplify(sp.expand_log(Ltot.subs({a_: 0, b_: 0}), force=True)),
        "hallucination": sp.limit(Ltot.subs(a_, 0), b_, sp.oo),  # relation learned, subject not
        "subject_first": sp.limit(Ltot.subs(b_, 0), a_, sp.oo),  # subject learned, relation not
        "final": sp.limit(sp.limit(Ltot, a_, sp.oo), b_, sp.oo),
    }
    # leading order: tau(m) = [log(1/alpha^2) + log(4 sqrt(c) m) + Ein(m)/n] / lambda + O(alpha^2)
    lam = 2 * sp.sqrt(c_) / P_
    out["tau_leading"] = (sp.log(1 / alpha**2) + sp.log(4 * sp.sqrt(c_) * m_)
                          + (sp.Ei(m_) - sp.EulerGamma - sp.log(m_)) / n_) / lam

def proofs() -> dict:
    """name -> True for every identity the derivation claims (each a symbolic simplification to 0)."""
    d = derivation()
    res = {"normaliser factorises Z = e^shared Z_S Z_R": d["Z_factorisation_check"] == 0,
           "loss splits L = L_S(a) + L_R(b)": d["split_check"] == 0,
           "T and N drop out (dL/dT = dL/dN = 0)": all(e == 0 for e in d["T_N_free"]),
           "class flow = gradient of L_S + L_R": all(e == 0 for e in d["rhs_check_split"].values()),
           "Qhat = Q + M^2/(RD)": all(e == 0 for e in d["Qhat_identity"]),
           "1-D margin equations": all(e == 0 for e in d["margin_rhs_check"]),
           "subject/relation modes are one generic mode": all(e == 0 for e in d["mode_rhs_check"]),
           "d tau/dt = 1 along the flow": d["dtau_check"] == 0,
           "escape rates = 2 sqrt(c)/P": all(e == 0 for e in d["rate_from_mode_check"]),
           "jacobian at 0 of the model's loss = that of the split form":
               all(e == sp.zeros(3, 3) for e in d["jacobian_check"])}
    for name, e in d["dconserved"].items():
        res[f"d{name}/dt = 0"] = e == 0
    return res


# ----------------------------------------------------------------------------- code generation
@functools.lru_cache(maxsize=1)
def flow_equations() -> dict:
    """Reduced flow {param: d param/dt} in the numerically stable split form (fast: no simplification).

    dp/dt = -(1/n_p) d/dp [L_S(k (w1 - w0)) + L_R(kap (v1 - v0))]; :func:`derivation` proves this equals
    -(1/n_p) dL_red/dp of the loss built from the model (``rhs_check_split``). Written with e^{-margin}
    so that nothing overflows once the margins are large and positive.
    """
    LS, LR = mode_loss_expr(a_, D), mode_loss_expr(b_, R)
    Lsplit = (LS + LR).subs({a_: k * (w1 - w0), b_: kap * (v1 - v0)})
    return {p: -sp.diff(Lsplit, p) / MULTIPLICITY[p] for p in PARAMS}


@functools.lru_cache(maxsize=1)
def linearization() -> dict:
    """Jacobian of the class flow at the origin, its eigenvalues and the escape rates (closed forms).

    Block (w1, w0, k) has eigenvalues 0, +-mu_S with mu_S = sqrt((D-1)/(R D)) / S; block (v1, v0, kap)
    0, +-mu_R with mu_R = sqrt((R-1)/(R D)) / R. A margin is a product of two factors growing at mu,
    so it grows at lambda = 2 mu: ``rates`` holds mu (``*_eigen``) and lambda (``subject``, ``relation``).
    """
    eq = flow_equations()
    origin = {p: 0 for p in PARAMS}
    out = {}
    Js = sp.Matrix([[sp.diff(eq[p], q) for q in (w1, w0, k)] for p in (w1, w0, k)]).subs(origin)
    Jr = sp.Matrix([[sp.diff(eq[p], q) for q in (v1, v0, kap)] for p in (v1, v0, kap)]).subs(origin)
    Js, Jr = Js.applyfunc(sp.simplify), Jr.applyfunc(sp.simplify)
    out["jacobian_origin"] = (Js, Jr)
    ev_s, ev_r = Js.eigenvals(), Jr.eigenvals()
    out["eigen"] = (ev_s, ev_r)
    probe = {S: 16, R: 4, D: 8}
    mu_s = sp.simplify(max(ev_s, key=lambda e: float(e.subs(probe))))
    mu_r = sp.simplify(max(ev_r, key=lambda e: float(e.subs(probe))))
    out["rates"] = {"subject_eigen": mu_s, "relation_eigen": mu_r,
                    "subject": sp.simplify(2 * mu_s), "relation": sp.simplify(2 * mu_r)}
    return out


@functools.lru_cache(maxsize=1)
def class_rhs_numpy():
    """Lambdified reduced flow: f(y (10, ...) array, S, R, D, T, N) -> (10, ...) d y / d t.

    Vectorised over a batch: y[i] and the sizes may be arrays that broadcast together.
    Order of the parameters: :data:`PARAM_NAMES`. Gradients are per real token, as in the full flow.
    """
    eq = flow_equations()
    f = sp.lambdify([PARAMS, S, R, D, T, N], [eq[p] for p in PARAMS], modules="numpy", cse=True)

    def rhs(y, S_, R_, D_, T_=32, N_=20):
        import numpy as np

        with np.errstate(divide="ignore", invalid="ignore"):
            out = f(tuple(y), S_, R_, D_, T_, N_)
        shape = np.broadcast_shapes(np.shape(y[0]), np.shape(S_), np.shape(R_), np.shape(D_))
        out = np.array([np.broadcast_to(o, shape) for o in out], dtype=np.float64)
        # D = 1 or R = 1: the class w0 (resp. v0) is empty (0 entries, 0/0 above); it does not move
        out[1] = np.where(np.broadcast_to(D_, shape) == 1, 0.0, out[1])
        out[4] = np.where(np.broadcast_to(R_, shape) == 1, 0.0, out[4])
        return out

    return rhs


@functools.lru_cache(maxsize=1)
def rates_numpy():
    """Lambdified escape rates: (subject, relation, subject_eigen, relation_eigen) as functions of (S, R, D)."""
    r = linearization()["rates"]
    return {name: sp.lambdify([S, R, D], r[name], modules="numpy") for name in r}


@functools.lru_cache(maxsize=1)
def mode_rhs_numpy():
    """Lambdified 1-D mode equation dm/dt = F(m; n, P, c, Q) (vectorised)."""
    return sp.lambdify([m_, n_, P_, c_, Q_], derivation()["mode_rhs"], modules="numpy")
